"""The web process: a stand-in SaaS app whose AI features are tracked."""
