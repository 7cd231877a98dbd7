"""The main job: the whole pipeline under a demo load, ending with a report."""
