// relay's web console: shows times in the browser's zone, refreshes the parts of a page marked
// data-live (the page's own URL fetched again, every data-refresh seconds, while the tab is
// visible), and draws the live chart from /console/live.json. Plain script, no library: the
// pages work without it, only less live.
"use strict";

(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (isNaN(at)) return;
      function two(n) { return (n < 10 ? "0" : "") + n; }
      el.title = el.textContent;
      el.textContent = at.getFullYear() + "-" + two(at.getMonth() + 1) + "-" + two(at.getDate()) +
        " " + two(at.getHours()) + ":" + two(at.getMinutes()) + ":" + two(at.getSeconds());
    });
  }

  // -- parts that refresh themselves ---------------------------------------------------------
  var raw = new Map(); // each live part's HTML as the server last sent it
  document.querySelectorAll("[data-live][id]").forEach(function (el) {
    raw.set(el.id, el.innerHTML);
  });
  localTimes(document);

  function refresh() {
    if (document.hidden) return;
    fetch(location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("text/html") !== 0) return null;
        return response.text();
      })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        raw.forEach(function (html, id) {
          var now = fresh.getElementById(id), el = document.getElementById(id);
          if (!now || !el || now.innerHTML === html) return;
          // Never under the keyboard: a part holding the focus waits for the next round.
          if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
          raw.set(id, now.innerHTML);
          el.innerHTML = now.innerHTML;
          localTimes(el);
        });
      })
      .catch(function () { /* the relay is restarting, say: the next round tries again */ });
  }

  var every = Number(document.body.getAttribute("data-refresh"));
  if (every > 0) setInterval(refresh, every * 1000);

  // -- the chart -----------------------------------------------------------------------------
  var svg = document.getElementById("chart");
  if (!svg) return;
  var NS = "http://www.w3.org/2000/svg";
  var H = 180, LEFT = 44, BOTTOM = 20, TOP = 8;
  var SERIES = [
    { index: 1, cls: "line-in", name: "events in" },
    { index: 2, cls: "line-out", name: "delivered" },
    { index: 3, cls: "line-failed", name: "failed attempts" },
  ];

  function node(name, attributes, text) {
    var el = document.createElementNS(NS, name);
    Object.keys(attributes).forEach(function (key) { el.setAttribute(key, attributes[key]); });
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function ceiling(value) { // 1, 2, 5, 10, 20, 50 ...
    var step = 1;
    while (step < value) {
      if (step * 2 >= value) return step * 2;
      if (step * 5 >= value) return step * 5;
      step *= 10;
    }
    return step;
  }

  function draw(data) {
    var seconds = data.seconds;
    if (!seconds.length) return;
    var top = 1;
    seconds.forEach(function (s) { top = Math.max(top, s[1], s[2], s[3]); });
    top = ceiling(top);
    // Drawn at the size it is shown, so that its text is never stretched.
    var W = Math.max(200, Math.round(svg.getBoundingClientRect().width));
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var n = seconds.length, width = W - LEFT, height = H - BOTTOM - TOP;
    function x(i) { return LEFT + (n === 1 ? width : (i * width) / (n - 1)); }
    function y(v) { return TOP + height - (v * height) / top; }
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    [0, top / 2, top].forEach(function (v) {
      svg.appendChild(node("line", { x1: LEFT, x2: W, y1: y(v), y2: y(v), class: "grid" }));
      svg.appendChild(node("text", { x: LEFT - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
        String(v)));
    });
    [[0, "-" + n + " s"], [Math.floor((n - 1) / 2), "-" + Math.round(n / 2) + " s"], [n - 1, "now"]]
      .forEach(function (tick) {
        svg.appendChild(node("text", { x: x(tick[0]), y: H - 4, class: "axis",
          "text-anchor": tick[0] === 0 ? "start" : tick[0] === n - 1 ? "end" : "middle" }, tick[1]));
      });
    SERIES.forEach(function (series) {
      var points = seconds.map(function (s, i) { return x(i).toFixed(1) + "," + y(s[series.index]).toFixed(1); });
      svg.appendChild(node("polyline", { points: points.join(" "), class: "line " + series.cls }));
    });
    var last = seconds[n - 1];
    document.getElementById("chart-now").textContent =
      "Last second: " + SERIES.map(function (s) { return last[s.index] + " " + s.name; }).join(", ") +
      "; the scale goes to " + top + " a second.";
  }

  function poll() {
    if (document.hidden) return;
    fetch(svg.getAttribute("data-source"), { cache: "no-store", credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) { if (data) draw(data); })
      .catch(function () {});
  }
  poll();
  setInterval(poll, 1000);
})();
