// Optional: counts down to the time in the headline. The page reads completely without it.
(function () {
  var el = document.querySelector("time[data-countdown]");
  var words = document.body.getAttribute("data-cd");
  if (!el || !words) return;
  words = words.split("|"); // left, days, hours, minutes, passed
  var target = Date.parse(el.getAttribute("datetime"));
  var made = Date.parse(document.body.getAttribute("data-at"));
  // A page rendered for another time (a replay, an archive) gets no countdown.
  if (isNaN(target) || !(Math.abs(Date.now() - made) < 2 * 86400000)) return;
  var out = document.createElement("span");
  out.className = "cd";
  el.parentNode.appendChild(out);
  function tick() {
    var left = Math.floor((target - Date.now()) / 60000);
    if (left < 0) { out.textContent = words[4]; return; }
    var d = Math.floor(left / 1440), h = Math.floor(left % 1440 / 60), m = left % 60;
    var sep = document.documentElement.lang === "en" ? " " : "";
    out.textContent = words[0] + " " + (d ? d + sep + words[1] + " " : "") +
      (d || h ? h + sep + words[2] + " " : "") + m + sep + words[3];
    setTimeout(tick, 30000);
  }
  tick();
})();
