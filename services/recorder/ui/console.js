// Call page: the recording's player follows the transcript (the line being played is highlighted and kept in
// view; clicking a line seeks there), and a live view while the call is in progress (live.js).
"use strict";
(function () {
  const player = document.getElementById("player");
  const lines = Array.from(document.querySelectorAll("#transcript .turn[data-start]"))
    .filter((el) => el.dataset.start !== "");
  if (player) {
    lines.forEach((el) => el.addEventListener("click", () => {
      player.currentTime = Number(el.dataset.start) / 1000; player.play();
    }));
    player.addEventListener("timeupdate", () => {
      const ms = player.currentTime * 1000;
      let current = null;
      for (const el of lines) {
        const start = Number(el.dataset.start);
        const end = el.dataset.end !== "" ? Number(el.dataset.end) : start + 1500;
        if (start <= ms && ms <= Math.max(end, start + 300)) current = el;
      }
      lines.forEach((el) => el.classList.toggle("playing", el === current));
      if (current && player.dataset.follow !== current.dataset.start) {
        player.dataset.follow = current.dataset.start;
        current.scrollIntoView({ block: "nearest", behavior: "smooth" });
      }
    });
  }
  const live = document.getElementById("live");
  if (live && window.SwitchboardLive) {
    window.SwitchboardLive(live.dataset.callId, live.dataset.token, document.getElementById("live-log"),
      document.getElementById("live-status"), () => setTimeout(() => location.reload(), 2500));
  }
})();
