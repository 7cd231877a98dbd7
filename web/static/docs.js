// Swagger UI for /docs, from the copy this server serves (never a CDN): the page's CSP allows 'self' only,
// so this initializer is a file rather than an inline script.
"use strict";

window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.schemaUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null, // the default sends the schema to an online validator
  });
});
