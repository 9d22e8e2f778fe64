// Live scenario progress: counts by state from the server's event stream. Without script
// (or without EventSource) the page keeps the counts it was rendered with.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var section = document.getElementById("progress");
  if (!section || !window.EventSource) return;
  var source = new EventSource(section.getAttribute("data-events-url"));
  source.addEventListener("progress", function (e) {
    var p = JSON.parse(e.data);
    section.querySelectorAll("[data-count]").forEach(function (cell) {
      var state = cell.getAttribute("data-count");
      var n = state === "total" ? p.total : (p.states[state] || 0);
      cell.textContent = String(n);
    });
    if (p.done) {
      var note = document.getElementById("progress-state");
      note.textContent = note.getAttribute("data-done-text");
      section.setAttribute("data-done", "true");
      source.close();
    }
  });
});
