// Visit page: keep the jobs table current by polling the API every 2 s while any job is not final.
"use strict";
// The path the service is published under ("" at /): every URL below starts with it.
const ROOT = document.body.dataset.root || "";
(function () {
  const table = document.getElementById("jobs");
  const visit = table.dataset.visit;
  const FINAL = new Set(["success", "failed", "skipped"]);

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : text;
    return td;
  }
  function setStatus(span, status) {
    span.textContent = status;
    span.className = "status " + status;
    span.dataset.status = status;
  }
  function row(job) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    const id = document.createElement("td");
    const a = document.createElement("a");
    a.href = job.url || ROOT + "/jobs/" + job.id;
    a.textContent = job.id;
    id.appendChild(a);
    tr.appendChild(id);
    tr.appendChild(cell(job.display_name || job.recipe));
    const scan = cell(job.scan_file ? job.scan_file.split("/").pop() : "", "path");
    scan.title = job.scan_file || "";
    tr.appendChild(scan);
    tr.appendChild(cell(job.created ? job.created.replace("T", " ").slice(0, 19) : ""));
    const st = document.createElement("td");
    const span = document.createElement("span");
    setStatus(span, job.status);
    st.appendChild(span);
    if (job.cancelled) {
      const note = document.createElement("small");
      note.className = "cancelled";
      note.textContent = " cancelled";
      st.appendChild(note);
    }
    tr.appendChild(st);
    return tr;
  }
  function pending() {
    return [...table.querySelectorAll("tbody [data-status]")].some((s) => !FINAL.has(s.dataset.status));
  }
  async function refresh() {
    try {
      const r = await fetch(ROOT + "/api/visits/" + encodeURIComponent(visit) + "/jobs?limit=500",
                            { credentials: "same-origin" });
      if (!r.ok) return;
      const jobs = await r.json();
      const body = table.tBodies[0];
      for (const job of jobs.slice().reverse()) {
        const tr = body.querySelector('tr[data-job="' + job.id + '"]');
        if (tr) setStatus(tr.querySelector("[data-status]"), job.status);
        else body.insertBefore(row(job), body.firstChild);
      }
      const none = document.getElementById("no-jobs");
      if (none && jobs.length) none.remove();
    } catch (e) { /* the next poll retries */ }
  }
  let quiet = 0; // polls with every job final: keep a slow poll so new jobs show up
  setInterval(() => {
    if (pending() || ++quiet % 5 === 0) refresh();
  }, 2000);

  // "Process…" buttons: the submit form of the chosen recipe for that scan.
  for (const form of document.querySelectorAll("form.process")) {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const recipe = form.elements.recipe.value;
      location.href = ROOT + "/recipes/" + encodeURIComponent(recipe) + "/submit?scan=" +
        encodeURIComponent(form.dataset.scan);
    });
  }
})();
