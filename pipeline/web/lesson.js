/* s2v-batch lesson player: chapters and transcript that seek, and — inside an LMS — the SCORM 1.2 / 2004 runtime:
   find the API, initialise, resume at the saved location, report progress and completion, terminate once.
   Without an LMS it is a plain page: every LMS call is skipped. */
(function () {
  "use strict";

  // SCORM: the API object is on a parent or opener frame (SCORM 1.2 RTE 3.3.6.1; 2004 RTE 3.1.2.1)
  function findIn(win, name) {
    for (var hops = 0; win && hops < 10; hops++) {
      try { if (win[name]) return win[name]; } catch (e) { return null; } // another origin: not our LMS
      if (!win.parent || win.parent === win) break;
      win = win.parent;
    }
    return null;
  }
  function findApi(name) {
    var api = findIn(window, name);
    if (!api && window.opener) api = findIn(window.opener, name);
    return api;
  }

  function pad(n, w) { n = String(n); while (n.length < w) n = "0" + n; return n; }
  function time12(s) { // CMITimespan: HHHH:MM:SS.SS
    var cs = Math.round(s * 100), h = Math.floor(cs / 360000), m = Math.floor(cs / 6000) % 60, r = cs % 6000;
    return pad(h, 4) + ":" + pad(m, 2) + ":" + pad(Math.floor(r / 100), 2) + "." + pad(r % 100, 2);
  }
  function time2004(s) { return "PT" + (Math.round(s * 100) / 100) + "S"; } // ISO 8601 duration

  // one adapter over both versions' calls and data model names
  function Lms(version) {
    var v12 = version === "1.2", api = findApi(v12 ? "API" : "API_1484_11");
    var names = v12 ? {location: "cmi.core.lesson_location", status: "cmi.core.lesson_status",
                       exit: "cmi.core.exit", time: "cmi.core.session_time", suspend: "cmi.suspend_data"}
                    : {location: "cmi.location", status: "cmi.completion_status", exit: "cmi.exit",
                       time: "cmi.session_time", suspend: "cmi.suspend_data"};
    var on = false, done = false;
    function call(f12, f2004) {
      var args = Array.prototype.slice.call(arguments, 2);
      try { return api[v12 ? f12 : f2004].apply(api, args); } catch (e) { return ""; }
    }
    return {
      present: !!api,
      start: function () { on = !!api && String(call("LMSInitialize", "Initialize", "")) === "true"; return on; },
      get: function (k) { return on ? String(call("LMSGetValue", "GetValue", names[k] || k)) : ""; },
      set: function (k, val) { if (on) call("LMSSetValue", "SetValue", names[k] || k, String(val)); },
      commit: function () { if (on) call("LMSCommit", "Commit", ""); },
      sessionTime: function (s) { this.set("time", v12 ? time12(s) : time2004(s)); },
      finish: function () { if (on && !done) { done = true; call("LMSFinish", "Terminate", ""); } },
      v12: v12
    };
  }

  // what was watched: the media's own played ranges plus those saved before (seeking past does not count)
  function parseRanges(text) {
    var out = [];
    (text || "").split(",").forEach(function (p) {
      var ab = p.split("-"), a = parseFloat(ab[0]), b = parseFloat(ab[1]);
      if (isFinite(a) && isFinite(b) && b > a) out.push([a, b]);
    });
    return out;
  }
  function merge(ranges, gap) {
    ranges.sort(function (x, y) { return x[0] - y[0]; });
    var out = [];
    ranges.forEach(function (r) {
      var last = out[out.length - 1];
      if (last && r[0] <= last[1] + (gap || 0.5)) last[1] = Math.max(last[1], r[1]); else out.push([r[0], r[1]]);
    });
    return out;
  }
  // SCORM 1.2 keeps at most 4096 characters of suspend_data: a learner who skipped about a lot gets coarser
  // ranges (small gaps closed) rather than a value the LMS cuts or refuses
  function pack(ranges) {
    for (var gap = 0.5; ; gap *= 2) {
      var text = merge(ranges.slice(), gap).map(function (r) { return r[0].toFixed(1) + "-" + r[1].toFixed(1); })
        .join(",");
      if (text.length <= 4000 || gap > 1e5) return text.slice(0, 4000);
    }
  }

  function lesson(root) {
    var video = root.querySelector("video"), status = root.querySelector(".s2v-status");
    var share = parseFloat(root.getAttribute("data-completion") || "0.9");
    var version = root.getAttribute("data-scorm"), lms = version ? Lms(version) : null;
    var saved = [], completed = false, t0 = Date.now(), lastSave = 0;
    function say(text) { if (status) status.textContent = text; }

    function wire(b) {
      b.addEventListener("click", function () {
        video.currentTime = parseFloat(b.getAttribute("data-t"));
        video.play().catch(function () {});
        video.focus();
      });
    }
    Array.prototype.forEach.call(root.querySelectorAll(".s2v-seek"), wire);
    // a page that names no chapters itself (the run report) gets its menu from the chapters track
    Array.prototype.forEach.call(root.querySelectorAll("track[kind=chapters]"), function (el) {
      function build() {
        var cues = el.track && el.track.cues;
        if (root.querySelector(".s2v-chapters") || !cues || !cues.length) return;
        var nav = document.createElement("nav"), h = document.createElement("h3"), ol = document.createElement("ol");
        nav.className = "s2v-chapters";
        h.id = root.id + "-ch";
        h.textContent = "Chapters";
        nav.setAttribute("aria-labelledby", h.id);
        Array.prototype.forEach.call(cues, function (c) {
          var li = document.createElement("li"), b = document.createElement("button"), t = Math.floor(c.startTime);
          b.type = "button";
          b.className = "s2v-seek";
          b.setAttribute("data-t", c.startTime.toFixed(3));
          b.textContent = Math.floor(t / 60) + ":" + (t % 60 < 10 ? "0" : "") + (t % 60);
          wire(b);
          li.appendChild(b);
          li.appendChild(document.createTextNode(" " + c.text));
          ol.appendChild(li);
        });
        nav.appendChild(h);
        nav.appendChild(ol);
        (status || video).insertAdjacentElement("afterend", nav);
      }
      el.addEventListener("load", build);
      build();
    });
    // the chapters track loads only when not disabled; its cue change marks the current chapter in the menu
    Array.prototype.forEach.call(video.textTracks, function (t) {
      if (t.kind !== "chapters") return;
      t.mode = "hidden";
      t.addEventListener("cuechange", function () {
        var cue = t.activeCues && t.activeCues[0];
        Array.prototype.forEach.call(root.querySelectorAll(".s2v-chapters .s2v-seek"), function (b) {
          var here = cue && Math.abs(parseFloat(b.getAttribute("data-t")) - cue.startTime) < 0.01;
          if (here) b.setAttribute("aria-current", "true"); else b.removeAttribute("aria-current");
        });
      });
    });

    function watched() {
      var ranges = saved.slice();
      for (var i = 0; i < video.played.length; i++) ranges.push([video.played.start(i), video.played.end(i)]);
      return merge(ranges);
    }
    function progress() {
      if (!video.duration || !isFinite(video.duration)) return 0;
      var sum = 0;
      watched().forEach(function (r) { sum += r[1] - r[0]; });
      return Math.min(1, sum / video.duration);
    }
    function save(force) {
      if (!lms || (!force && Date.now() - lastSave < 5000)) return;
      lastSave = Date.now();
      var p = progress();
      lms.set("location", video.currentTime.toFixed(1));
      lms.set("suspend", pack(watched()));
      if (!lms.v12) lms.set("cmi.progress_measure", p.toFixed(3));
      if (!completed && p >= share) {
        completed = true;
        lms.set("status", "completed");
        say("Lesson completed.");
      }
      lms.commit();
    }

    if (lms && lms.start()) {
      var st = lms.get("status");
      if (st === "completed" || st === "passed") completed = true;
      else if (st === "" || st === "not attempted" || st === "unknown") lms.set("status", "incomplete");
      lms.set("exit", "suspend"); // keep the location for the next session
      saved = parseRanges(lms.get("suspend"));
      var at = parseFloat(lms.get("location"));
      var resume = function () {
        if (at > 0 && at < video.duration - 1) {
          video.currentTime = at;
          var m = Math.floor(at / 60), s = Math.floor(at % 60);
          say("Resumed at " + m + ":" + (s < 10 ? "0" : "") + s + ".");
        }
      };
      if (video.readyState >= 1) resume(); else video.addEventListener("loadedmetadata", resume, {once: true});
      lms.commit();
    } else if (lms) {
      lms = null; // no LMS answered: a plain page
    }
    video.addEventListener("timeupdate", function () { save(false); });
    video.addEventListener("pause", function () { save(true); });
    video.addEventListener("ended", function () { save(true); });
    var closed = false;
    function close() {
      if (!lms || closed) return;
      closed = true;
      save(true);
      lms.sessionTime((Date.now() - t0) / 1000);
      lms.commit();
      lms.finish();
    }
    window.addEventListener("pagehide", close);
    window.addEventListener("beforeunload", close);
    root.s2v = {progress: progress, save: save, close: close, completed: function () { return completed; }};
  }

  function start() { Array.prototype.forEach.call(document.querySelectorAll(".s2v-lesson"), lesson); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
