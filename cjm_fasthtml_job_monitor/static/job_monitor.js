// Client behaviour of cjm-fasthtml-job-monitor, loaded once per page by get_sse_headers().
//
// The server sends plain HTML over SSE; this script only reads data-jm-* attributes
// from what arrives, so no update ever carries a script tag. It handles:
// - opening the modal (data-jm-open, data-jm-open-modal) and pausing keyboard navigation while it is open;
// - the elapsed time, ticked from the server's figure with one interval for the whole page;
// - the log view: follow the tail only at the bottom, "jump to latest", line limit, level filter;
// - the selected tab and log state across re-renders of the modal;
// - the overlay: its siblings are made inert while it covers them;
// - the page title and the opt-in notification when a job ends.
(function () {
  "use strict";
  if (window.jobMonitor) return;

  var tickTimer = null;
  var baseTitle = null;
  var titleOutcomePending = false;
  var logState = new Map();  // log container id -> {following, filter}
  var tabState = new Map();  // tab radio group name -> checked input id
  var notified = new Set();  // progress element keys that already raised a notification
  var NOTIFY_KEY = "jm-notify";

  // --- Durations: same rule as format_duration in progress_tab.py ---------------------------

  function formatDuration(seconds) {
    if (!isFinite(seconds)) return "\u2014";
    var total = Math.max(0, Math.floor(seconds));
    var h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    var ss = (s < 10 ? "0" : "") + s;
    if (h) return h + ":" + (m < 10 ? "0" : "") + m + ":" + ss;
    return m + ":" + ss;
  }

  // --- Elapsed time ----------------------------------------------------------------------------
  // The server renders the elapsed seconds it computed from its own clock. The browser only adds
  // the time since that element arrived, measured with performance.now(), so a browser clock
  // that is off by hours does not matter.

  function initElapsed(el) {
    if (el._jmElapsed) return;
    var base = parseFloat(el.getAttribute("data-elapsed-s"));
    el._jmElapsed = { base: isFinite(base) ? base : NaN, arrived: performance.now() };
  }

  function runningElapsed() {
    return document.querySelectorAll('[data-jm-elapsed][data-running="1"]');
  }

  function tick() {
    var els = runningElapsed();
    if (!els.length) { stopTicker(); return; }
    var now = performance.now();
    els.forEach(function (el) {
      initElapsed(el);
      var e = el._jmElapsed;
      if (isFinite(e.base)) el.textContent = formatDuration(e.base + (now - e.arrived) / 1000);
    });
  }

  function ensureTicker() {
    if (tickTimer === null && runningElapsed().length) tickTimer = window.setInterval(tick, 1000);
  }

  function stopTicker() {
    if (tickTimer !== null) { window.clearInterval(tickTimer); tickTimer = null; }
  }

  // --- Modal -----------------------------------------------------------------------------------

  function kb(dialog, action) {
    var id = dialog.getAttribute("data-kb-system-id");
    var coordinator = window.kbCoordinator;
    if (id && coordinator && typeof coordinator[action] === "function") {
      try { coordinator[action](id); } catch (err) { console.warn("job monitor: keyboard " + action + " failed", err); }
    }
  }

  function openModal(dialog) {
    if (!dialog || dialog.tagName !== "DIALOG" || !dialog.isConnected) return;
    if (!dialog.open) {
      try { dialog.showModal(); } catch (err) { dialog.setAttribute("open", ""); }
    }
    kb(dialog, "pause");
  }

  function restoreTab(dialog) {
    dialog.querySelectorAll("input[data-jm-tab]").forEach(function (input) {
      var saved = tabState.get(input.name);
      if (saved && input.id === saved) input.checked = true;
    });
  }

  // --- Logs ------------------------------------------------------------------------------------

  function logStateOf(container) {
    var state = logState.get(container.id);
    if (!state) { state = { following: true, filter: "all" }; logState.set(container.id, state); }
    return state;
  }

  function logRoot(container) {
    return container.closest("[data-jm-log-root]") || container.parentElement;
  }

  function setJumpVisible(container, visible) {
    var jump = logRoot(container).querySelector("[data-jm-log-jump]");
    if (jump) jump.hidden = !visible;
  }

  function atBottom(container) {
    return container.scrollHeight - container.scrollTop - container.clientHeight < 8;
  }

  function scrollToEnd(container) {
    container.scrollTop = container.scrollHeight;
  }

  function trimLines(lines, limit) {
    if (!(limit > 0)) return;
    var extra = lines.childElementCount - limit;
    while (extra-- > 0 && lines.firstElementChild) lines.removeChild(lines.firstElementChild);
  }

  function linesAdded(lines) {
    var container = lines.closest("[data-jm-log]");
    if (!container) return;
    trimLines(lines, parseInt(container.getAttribute("data-limit"), 10));
    var empty = container.querySelector("[data-jm-log-empty]");
    if (empty) empty.hidden = lines.childElementCount > 0;
    var state = logStateOf(container);
    if (state.following) scrollToEnd(container);
    else setJumpVisible(container, true);
  }

  function initLog(container) {
    if (container._jmInit) return;
    container._jmInit = true;
    var state = logStateOf(container);
    container.setAttribute("data-filter", state.filter);
    var select = logRoot(container).querySelector("select[data-jm-log-filter]");
    if (select) select.value = state.filter;
    var lines = container.querySelector("[data-jm-log-lines]");
    if (lines) linesAdded(lines);
    if (state.following) scrollToEnd(container);
    setJumpVisible(container, !state.following);
  }

  // --- Overlay ---------------------------------------------------------------------------------

  function coverSiblings(overlay) {
    var parent = overlay.parentElement;
    if (!parent) return;
    overlay._jmParent = parent;
    parent.setAttribute("aria-busy", "true");
    Array.prototype.forEach.call(parent.children, function (child) {
      if (child !== overlay && !child.hasAttribute("inert")) {
        child.setAttribute("inert", "");
        child.setAttribute("data-jm-inert", "1");
      }
    });
  }

  function uncover(parent) {
    if (!parent || parent.querySelector(":scope > [data-jm-overlay]")) return;
    parent.removeAttribute("aria-busy");
    parent.querySelectorAll(':scope > [data-jm-inert="1"]').forEach(function (child) {
      child.removeAttribute("inert");
      child.removeAttribute("data-jm-inert");
    });
  }

  // --- Title and notification ------------------------------------------------------------------

  function titleEnabled(el) {
    var dialog = el.closest("dialog[data-jm-modal]");
    return dialog && dialog.getAttribute("data-jm-title") === "1";
  }

  function progressUpdated(el) {
    if (!titleEnabled(el)) return;
    if (baseTitle === null) baseTitle = document.title;
    var status = el.getAttribute("data-status-label") || "";
    var percent = el.getAttribute("data-percent");
    if (el.getAttribute("data-terminal") === "1") {
      if (document.hidden) {
        document.title = (el.getAttribute("data-outcome") || status) + " \u00b7 " + baseTitle;
        titleOutcomePending = true;
      } else {
        document.title = baseTitle;
      }
      notify(el);
      return;
    }
    document.title = (percent ? percent + "%" : status) + " \u00b7 " + baseTitle;
  }

  function notificationsWanted() {
    try { return window.localStorage.getItem(NOTIFY_KEY) === "1"; } catch (err) { return false; }
  }

  function notify(el) {
    var dialog = el.closest("dialog[data-jm-modal]");
    if (!dialog || dialog.getAttribute("data-jm-notify") !== "1") return;
    if (!document.hidden || !notificationsWanted() || !("Notification" in window)) return;
    if (Notification.permission !== "granted") return;
    var key = (dialog.getAttribute("data-jm-job") || dialog.id) + ":" + el.getAttribute("data-status");
    if (notified.has(key)) return;
    notified.add(key);
    try {
      new Notification(el.getAttribute("data-outcome") || "Job ended", { body: baseTitle || document.title });
    } catch (err) {
      console.warn("job monitor: notification failed", err);
    }
  }

  function renderNotifyToggles(root) {
    var supported = "Notification" in window;
    var on = supported && notificationsWanted() && Notification.permission === "granted";
    (root || document).querySelectorAll("[data-jm-notify-toggle]").forEach(function (button) {
      button.hidden = !supported;
      button.setAttribute("aria-pressed", on ? "true" : "false");
      var label = button.querySelector("[data-jm-notify-label]");
      if (label) label.textContent = on ? "Notifications on" : "Notify me when done";
    });
  }

  function toggleNotifications() {
    if (!("Notification" in window)) return;
    if (notificationsWanted()) {
      try { window.localStorage.removeItem(NOTIFY_KEY); } catch (err) { /* storage blocked: nothing to undo */ }
      renderNotifyToggles();
      return;
    }
    Promise.resolve(Notification.requestPermission()).then(function (permission) {
      if (permission === "granted") {
        try { window.localStorage.setItem(NOTIFY_KEY, "1"); } catch (err) { /* storage blocked: off next load */ }
      }
      renderNotifyToggles();
    });
  }

  // --- Scanning new content --------------------------------------------------------------------

  function each(root, selector, fn) {
    if (root.matches && root.matches(selector)) fn(root);
    if (root.querySelectorAll) root.querySelectorAll(selector).forEach(fn);
  }

  function scan(root) {
    if (!root || root.nodeType !== 1) return;
    each(root, "[data-jm-elapsed]", initElapsed);
    each(root, "dialog[data-jm-modal]", function (dialog) {
      restoreTab(dialog);
      if (dialog.getAttribute("data-jm-open") === "1") {
        dialog.removeAttribute("data-jm-open");
        openModal(dialog);
      }
    });
    each(root, "[data-jm-log]", initLog);
    each(root, "[data-jm-overlay]", coverSiblings);
    each(root, "[data-jm-progress]", progressUpdated);
    if (root.querySelector && (root.matches("[data-jm-notify-toggle]") || root.querySelector("[data-jm-notify-toggle]"))) {
      renderNotifyToggles(root);
    }
    ensureTicker();
  }

  function removed(node) {
    if (node.nodeType !== 1) return;
    each(node, "dialog[data-jm-modal]", function (dialog) {
      if (dialog.open) kb(dialog, "resume");
    });
  }

  var observer = new MutationObserver(function (mutations) {
    var grown = new Set();
    var uncovered = new Set();
    mutations.forEach(function (m) {
      m.removedNodes.forEach(function (node) {
        removed(node);
        if (node.nodeType === 1 && node.hasAttribute && node.hasAttribute("data-jm-overlay")) uncovered.add(m.target);
      });
      m.addedNodes.forEach(function (node) {
        if (node.nodeType !== 1) return;
        if (m.target.hasAttribute && m.target.hasAttribute("data-jm-log-lines")) { grown.add(m.target); return; }
        scan(node);
      });
    });
    grown.forEach(linesAdded);
    uncovered.forEach(uncover);
  });

  // --- Events ----------------------------------------------------------------------------------

  document.addEventListener("click", function (evt) {
    var opener = evt.target.closest && evt.target.closest("[data-jm-open-modal]");
    if (opener) { openModal(document.getElementById(opener.getAttribute("data-jm-open-modal"))); return; }
    var jump = evt.target.closest && evt.target.closest("[data-jm-log-jump]");
    if (jump) {
      var container = logRoot(jump).querySelector("[data-jm-log]");
      if (container) { logStateOf(container).following = true; scrollToEnd(container); setJumpVisible(container, false); }
      return;
    }
    if (evt.target.closest && evt.target.closest("[data-jm-notify-toggle]")) toggleNotifications();
  });

  document.addEventListener("change", function (evt) {
    var target = evt.target;
    if (target.matches("input[data-jm-tab]") && target.checked) tabState.set(target.name, target.id);
    if (target.matches("select[data-jm-log-filter]")) {
      var container = logRoot(target).querySelector("[data-jm-log]");
      if (container) {
        logStateOf(container).filter = target.value;
        container.setAttribute("data-filter", target.value);
        if (logStateOf(container).following) scrollToEnd(container);
      }
    }
  });

  // Scroll events do not bubble, so listen in the capture phase.
  document.addEventListener("scroll", function (evt) {
    var container = evt.target;
    if (!container.matches || !container.matches("[data-jm-log]")) return;
    var state = logStateOf(container);
    state.following = atBottom(container);
    setJumpVisible(container, !state.following);
  }, true);

  // The dialog's close event does not bubble either.
  document.addEventListener("close", function (evt) {
    if (evt.target.matches && evt.target.matches("dialog[data-jm-modal]")) kb(evt.target, "resume");
  }, true);

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && titleOutcomePending && baseTitle !== null) {
      document.title = baseTitle;
      titleOutcomePending = false;
    }
  });

  function start() {
    observer.observe(document.documentElement, { childList: true, subtree: true });
    scan(document.body);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();

  window.jobMonitor = {
    formatDuration: formatDuration,
    activeTimers: function () { return tickTimer === null ? 0 : 1; },
    open: function (id) { openModal(document.getElementById(id)); },
    scan: scan
  };
})();
