// Submit form: the recipe's parameters as JSON to the API; on 202 go to the job page.
"use strict";
// The path the service is published under ("" at /): every URL below starts with it.
const ROOT = document.body.dataset.root || "";
(function () {
  const form = document.getElementById("submit-form");
  const errorBox = document.getElementById("form-error");

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }
  function value(input) {
    const kind = input.dataset.kind;
    if (kind === "boolean") return input.checked;
    const raw = input.value.trim();
    if (raw === "") return null;
    if (kind === "integer" || kind === "number") return Number(raw);
    if (kind === "enum") return JSON.parse(raw);
    if (kind === "array") {
      const items = raw.split(",").map((s) => s.trim()).filter((s) => s);
      const item = input.dataset.item;
      return item === "integer" || item === "number" ? items.map(Number) : items;
    }
    return raw;
  }
  function reason(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("\n");
    }
    return "the server answered " + status;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    errorBox.hidden = true;
    const parameters = {};
    for (const input of form.querySelectorAll("[data-kind]")) {
      const v = value(input);
      if (v !== null) parameters[input.name] = v;
    }
    const body = form.dataset.reprocess === "true"
      ? { parameters }
      : { recipe: form.dataset.recipe, scan_file: document.getElementById("scan").value.trim(), parameters };
    const button = document.getElementById("submit");
    button.disabled = true;
    try {
      const r = await fetch(form.dataset.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      let answer = null;
      try { answer = await r.json(); } catch (e) { answer = null; }
      if (r.status === 202 || r.ok) {
        location.href = answer.url || ROOT + "/jobs/" + answer.job_id;
        return;
      }
      showError(reason(answer, r.status));
    } catch (e) {
      showError("could not reach the server: " + e);
    } finally {
      button.disabled = false;
    }
  });
})();
