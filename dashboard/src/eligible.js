// Recounts the agents a new check would use while its filters are edited. The page works
// without this: the "Count matching agents" button does the same with a form post.
(function () {
  var form = document.querySelector("form.check");
  var out = document.getElementById("eligible-count");
  if (!form || !out || !window.fetch) return;
  var timer = null;
  function recount() {
    var data = new FormData(form);
    var q = new URLSearchParams();
    ["countries", "asns", "kind"].forEach(function (k) { q.set(k, data.get(k) || ""); });
    data.getAll("connection_classes").forEach(function (c) { q.append("connection_classes", c); });
    fetch("/app/checks/eligible?" + q.toString(), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (j) {
        if (!j) return;
        // The same sentence the server renders: the number in bold, the words after it.
        var n = document.createElement("strong");
        n.textContent = j.eligible;
        out.replaceChildren(n, " agents online match these filters now.");
      })
      .catch(function () {});
  }
  function later() {
    clearTimeout(timer);
    timer = setTimeout(recount, 250);
  }
  // Text fields report "input"; a select may report only "change".
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  recount();
})();
