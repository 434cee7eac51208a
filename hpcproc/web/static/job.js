// Job page: live statuses from the API's server-sent events; attachments and plots when it ends.
"use strict";
// The path the service is published under ("" at /): every URL below starts with it.
const ROOT = document.body.dataset.root || "";
(function () {
  const section = document.getElementById("job");
  const jobId = section.dataset.job;
  const FINAL = new Set(["success", "failed", "skipped"]);

  function setStatus(span, status) {
    if (!span || !status) return;
    span.textContent = status;
    span.className = "status " + status;
    span.dataset.status = status;
  }
  function showPlot(fig, force) {
    const img = fig.querySelector("img");
    if (!force && img.getAttribute("src")) return;
    img.onload = () => { fig.hidden = false; };
    img.onerror = () => { fig.hidden = true; };
    img.src = img.dataset.src + "?t=" + Date.now();
  }
  function applyStatus(data) {
    setStatus(document.getElementById("job-status"), data.status);
    for (const step of data.steps || []) {
      const tr = document.querySelector('#steps tr[data-step="' + step.step_id + '"]');
      if (!tr) continue;
      setStatus(tr.querySelector("[data-status]"), step.status);
      tr.querySelector(".message").textContent = step.message || "";
    }
  }
  async function refreshJob() {
    const r = await fetch(ROOT + "/api/jobs/" + jobId, { credentials: "same-origin" });
    if (!r.ok) return;
    const job = await r.json();
    applyStatus(job);
    const list = document.getElementById("attachments");
    list.textContent = "";
    for (const step of job.steps) {
      const tr = document.querySelector('#steps tr[data-step="' + step.step_id + '"]');
      if (tr && step.start) tr.querySelector(".start").textContent = step.start.slice(11, 19);
      if (tr && step.end) tr.querySelector(".end").textContent = step.end.slice(11, 19);
      for (const a of step.attachments) {
        const li = document.createElement("li");
        const link = document.createElement("a");
        link.href = a.url;
        link.setAttribute("download", "");
        link.textContent = a.name;
        const small = document.createElement("small");
        small.textContent = " " + a.file_type + ", step " + step.step_id;
        li.append(link, small);
        list.appendChild(li);
      }
      const fig = document.querySelector('#plots figure[data-step="' + step.step_id + '"]');
      if (fig && step.attachments.some((a) => a.file_type === "Result")) showPlot(fig, true);
    }
  }

  // Staff: approve (the job runs under the same id) or reject a job awaiting approval.
  async function decide(action, body) {
    const error = document.getElementById("approval-error");
    const r = await fetch(ROOT + "/api/jobs/" + jobId + "/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
      error.textContent = action + ": " + detail;
      error.hidden = false;
      return;
    }
    if (action === "reject") { window.location.reload(); return; }
    for (const id of ["approval", "approval-badge"]) {
      const el = document.getElementById(id);
      if (el) el.remove();
    }
  }
  const approveButton = document.getElementById("approve");
  if (approveButton) approveButton.addEventListener("click", () => decide("approve"));
  const rejectButton = document.getElementById("reject");
  if (rejectButton) {
    rejectButton.addEventListener("click", () =>
      decide("reject", { reason: document.getElementById("reject-reason").value }));
  }

  // Any user of the visit: cancel the job while it runs (it stops within about a second).
  const cancelButton = document.getElementById("cancel");
  if (cancelButton) {
    cancelButton.addEventListener("click", async () => {
      if (!window.confirm("Cancel job " + jobId + "? Running steps stop; what they made is kept.")) return;
      const error = document.getElementById("cancel-error");
      const r = await fetch(ROOT + "/api/jobs/" + jobId + "/cancel", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reason: document.getElementById("cancel-reason").value }),
      });
      if (!r.ok) {
        let detail = r.statusText;
        try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
        error.textContent = "cancel: " + detail;
        error.hidden = false;
        return;
      }
      const p = document.getElementById("cancelling");
      p.textContent = (await r.json()).cancelled;
      p.id = "cancel-record";
    });
  }

  if (section.dataset.final === "true" || !window.EventSource) return;
  const source = new EventSource(ROOT + "/api/jobs/" + jobId + "/events");
  let plotTimer = null;
  source.addEventListener("status", (ev) => {
    const data = JSON.parse(ev.data);
    applyStatus(data);
    // While it runs, refresh the live plots every few seconds (maps fill in point by point).
    if (!plotTimer && data.status === "running") {
      plotTimer = setInterval(() => {
        for (const fig of document.querySelectorAll("#plots figure")) {
          if (fig.querySelector("img").getAttribute("src")) showPlot(fig, true);
        }
      }, 5000);
    }
  });
  source.addEventListener("end", (ev) => {
    source.close();
    if (plotTimer) clearInterval(plotTimer);
    applyStatus(JSON.parse(ev.data));
    refreshJob();
  });
  source.addEventListener("error", () => {
    // The stream broke (server restart, network): EventSource reconnects by itself unless
    // the job is over.
    const st = document.getElementById("job-status").dataset.status;
    if (FINAL.has(st)) source.close();
  });
})();
