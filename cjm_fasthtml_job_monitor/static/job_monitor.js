// Client behaviour of cjm-fasthtml-job-monitor, loaded once per page by get_sse_headers().
//
// The server sends plain HTML over SSE; this script only reads data-jm-* attributes
// from what arrives, so no update ever carries a script tag. It handles:
// - opening the modal (data-jm-open, data-jm-open-modal), keeping it open with its tab and scroll
//   position when the server replaces it, and pausing keyboard navigation while it is open;
// - the elapsed time, ticked from the server's figure with one interval for the whole page;
// - the log view: follow the tail only at the bottom, "jump to latest", line limit, level filter;
// - status announcements in the modal's polite live region, and the tab's data-percent when the
//   server sends only the progress bar;
// - the overlay: its siblings are made inert while it covers them;
// - the page title and the opt-in notification when a job ends.
(function () {
  "use strict";
  if (window.jobMonitor) return;

  var tickTimer = null;
  var baseTitle = null;
  var titleOutcomePending = false;
  var logState = new Map();  // log container id -> {following, filter, scrollTop}
  var tabState = new Map();  // tab radio group name -> checked input id
  var seenStatus = new Map();  // dialog id -> last data-status seen in its progress tab
  var boxScroll = new Map();  // dialog id -> scrollTop of its modal box, read while it is in the page
  var notified = new Set();  // "<job>:<status>" keys that already raised a notification
  var NOTIFY_KEY = "jm-notify";
  var BOTTOM_SLACK_PX = 8;  // a log scrolled to within this distance of its end counts as at the bottom

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
  // that is off by hours does not matter. Every update brings a new element with a new figure.

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

  // One interval for the whole page, running only while some elapsed time is running.
  function syncTicker() {
    var running = runningElapsed().length > 0;
    if (running && tickTimer === null) tickTimer = window.setInterval(tick, 1000);
    if (!running) stopTicker();
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
    refreshLogs(dialog);
  }

  function restoreTab(dialog) {
    dialog.querySelectorAll("input[data-jm-tab]").forEach(function (input) {
      var saved = tabState.get(input.name);
      if (saved && input.id === saved) input.checked = true;
    });
  }

  function modalBox(dialog) {
    return dialog.querySelector(".modal-box");
  }

  // --- Logs ------------------------------------------------------------------------------------

  function logStateOf(container) {
    var state = logState.get(container.id);
    if (!state) { state = { following: true, filter: "all", scrollTop: 0 }; logState.set(container.id, state); }
    return state;
  }

  function logRoot(container) {
    return container.closest("[data-jm-log-root]") || container.parentElement;
  }

  function setJumpVisible(container, visible) {
    var jump = logRoot(container).querySelector("[data-jm-log-jump]");
    if (jump) jump.hidden = !visible;
  }

  function isShown(container) {
    return container.clientHeight > 0;
  }

  function atBottom(container) {
    return container.scrollHeight - container.scrollTop - container.clientHeight < BOTTOM_SLACK_PX;
  }

  function scrollToEnd(container) {
    container.scrollTop = container.scrollHeight;
    logStateOf(container).scrollTop = container.scrollTop;
  }

  // Bring a log to its saved place: the end while following, else where the reader left it.
  // A log in a hidden tab has no layout, so this runs again when its tab or the modal opens.
  function placeLog(container) {
    if (!isShown(container)) return;
    var state = logStateOf(container);
    if (state.following) scrollToEnd(container);
    else container.scrollTop = state.scrollTop;
    setJumpVisible(container, !state.following);
  }

  function refreshLogs(root) {
    root.querySelectorAll("[data-jm-log]").forEach(placeLog);
  }

  // Drop the oldest lines beyond the limit. While the reader is scrolled up, the first line in
  // view keeps its place on screen, so the text being read does not jump.
  function trimLines(container, lines, limit) {
    if (!(limit > 0) || lines.childElementCount <= limit) return;
    var state = logStateOf(container);
    var anchor = null, anchorOffset = 0;
    if (!state.following && isShown(container)) {
      var top = container.getBoundingClientRect().top;
      for (var line = lines.firstElementChild; line; line = line.nextElementSibling) {
        var rect = line.getBoundingClientRect();
        if (rect.bottom > top) { anchor = line; anchorOffset = rect.top - top; break; }
      }
    }
    var extra = lines.childElementCount - limit;
    while (extra-- > 0 && lines.firstElementChild) lines.removeChild(lines.firstElementChild);
    if (anchor && anchor.isConnected) {
      container.scrollTop += (anchor.getBoundingClientRect().top - container.getBoundingClientRect().top) - anchorOffset;
      state.scrollTop = container.scrollTop;
    }
  }

  // `fresh` marks a log container that was just rendered. It starts at the top, so its scroll
  // position is no sign of where the reader was.
  function linesAdded(lines, fresh) {
    var container = lines.closest("[data-jm-log]");
    if (!container) return;
    var state = logStateOf(container);
    // A reader who scrolled up since the last recorded position stops following, even when the
    // scroll event has not been dispatched yet.
    if (!fresh && state.following && isShown(container) && container.scrollTop < state.scrollTop - BOTTOM_SLACK_PX) {
      state.following = false;
      state.scrollTop = container.scrollTop;
    }
    trimLines(container, lines, parseInt(container.getAttribute("data-limit"), 10));
    updateEmptyNotice(container);
    if (state.following) scrollToEnd(container);
    else setJumpVisible(container, true);
  }

  // Levels that each filter of the log view hides, as job_monitor.css hides them.
  var HIDDEN_LEVELS = { all: [], info: ["debug"], warning: ["debug", "info"] };

  // Show the notice when no line is visible: none arrived yet, or the level filter hides them all.
  function updateEmptyNotice(container) {
    var empty = container.querySelector("[data-jm-log-empty]");
    var lines = container.querySelector("[data-jm-log-lines]");
    if (!empty || !lines) return;
    var hidden = HIDDEN_LEVELS[container.getAttribute("data-filter")] || [];
    var total = lines.childElementCount, visible = total;
    if (hidden.length) {
      visible = 0;
      for (var line = lines.firstElementChild; line; line = line.nextElementSibling) {
        if (hidden.indexOf(line.getAttribute("data-level")) < 0) visible++;
      }
    }
    empty.hidden = visible > 0;
    empty.textContent = total === 0 ? "No log output yet." :
      "No lines at this level yet. Show all levels to see " + (total === 1 ? "the other line." : "the " + total + " other lines.");
  }

  function initLog(container) {
    if (container._jmInit) return;
    container._jmInit = true;
    var state = logStateOf(container);
    container.setAttribute("data-filter", state.filter);
    var select = logRoot(container).querySelector("select[data-jm-log-filter]");
    if (select) select.value = state.filter;
    var lines = container.querySelector("[data-jm-log-lines]");
    if (lines) linesAdded(lines, true);
    placeLog(container);
  }

  // --- Overlay ---------------------------------------------------------------------------------

  function coverSiblings(overlay) {
    // Set from script, not a style attribute, so a strict Content Security Policy allows it.
    var z = parseInt(overlay.getAttribute("data-jm-z-index"), 10);
    if (isFinite(z)) overlay.style.zIndex = String(z);
    var parent = overlay.parentElement;
    if (!parent) return;
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

  // --- Status: live region, page title, notification -------------------------------------------

  function dialogOf(el) {
    return el.closest("dialog[data-jm-modal]");
  }

  // Called for every progress tab that arrives. The first one seen for a modal only records its
  // status, so a page that loads with a job already ended neither announces nor notifies.
  function progressUpdated(el) {
    var dialog = dialogOf(el);
    if (!dialog) return;
    var key = dialog.id;
    var status = el.getAttribute("data-status") || "";
    var previous = seenStatus.get(key);
    seenStatus.set(key, status);
    var terminal = el.getAttribute("data-terminal") === "1";
    var ended = terminal && previous !== undefined && previous !== status;

    if (previous !== undefined && previous !== status) announce(dialog, el.getAttribute("data-announce"));
    if (dialog.getAttribute("data-jm-title") === "1") updateTitle(el, terminal, ended);
    if (ended) notify(dialog, el);
  }

  // While the status stays the same, the routes send the bar row on its own, without the tab's root.
  // The row's data-percent goes to the root, where updateTitle reads it.
  function barUpdated(row) {
    var root = row.closest("[data-jm-progress]");
    if (!root) return;
    var percent = row.getAttribute("data-percent") || "";
    if (root.getAttribute("data-percent") === percent) return;
    root.setAttribute("data-percent", percent);
    progressUpdated(root);
  }

  function announce(dialog, text) {
    var live = dialog.querySelector("[data-jm-live]");
    if (live && text && live.textContent !== text) live.textContent = text;
  }

  function updateTitle(el, terminal, ended) {
    if (baseTitle === null) baseTitle = document.title;
    if (!terminal) {
      titleOutcomePending = false;
      var percent = el.getAttribute("data-percent");
      document.title = (percent ? percent + "%" : el.getAttribute("data-status-label") || "") + " \u00b7 " + baseTitle;
      return;
    }
    if (ended && document.hidden) {
      document.title = (el.getAttribute("data-outcome") || el.getAttribute("data-status-label")) + " \u00b7 " + baseTitle;
      titleOutcomePending = true;
    } else if (!titleOutcomePending) {
      document.title = baseTitle;
    }
  }

  function notificationsWanted() {
    try { return window.localStorage.getItem(NOTIFY_KEY) === "1"; } catch (err) { return false; }
  }

  function notify(dialog, el) {
    if (dialog.getAttribute("data-jm-notify") !== "1") return;
    if (!document.hidden || !notificationsWanted() || !("Notification" in window)) return;
    if (Notification.permission !== "granted") return;
    var key = (dialog.getAttribute("data-jm-job") || dialog.id) + ":" + el.getAttribute("data-status");
    if (notified.has(key)) return;
    notified.add(key);
    var heading = dialog.querySelector("[data-jm-title-text]");
    var title = (heading ? heading.textContent.trim() + ": " : "") + (el.getAttribute("data-outcome") || "Job ended");
    try {
      new Notification(title, { body: baseTitle || document.title, tag: key });
    } catch (err) {
      console.warn("job monitor: notification failed", err);
    }
  }

  function renderNotifyToggles(root) {
    var supported = "Notification" in window;
    var permission = supported ? Notification.permission : "denied";
    var on = supported && notificationsWanted() && permission === "granted";
    (root || document).querySelectorAll("[data-jm-notify-toggle]").forEach(function (button) {
      button.hidden = !supported;
      button.disabled = permission === "denied";
      button.setAttribute("aria-pressed", on ? "true" : "false");
      var label = button.querySelector("[data-jm-notify-label]");
      if (!label) return;
      if (permission === "denied") label.textContent = "Notifications blocked";
      else label.textContent = on ? "Notifications on" : "Notify me when done";
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
    each(root, "[data-jm-bar]", barUpdated);
    if (root.matches("[data-jm-notify-toggle]") || root.querySelector("[data-jm-notify-toggle]")) {
      renderNotifyToggles(root);
    }
  }

  // A dialog that the server replaces while it is open (htmx swaps it out of band) comes back
  // open, on the same tab and scrolled to the same place. A removed element has no layout, so its
  // scroll position is the one the scroll listener recorded.
  function removedDialogs(node, reopen) {
    if (node.nodeType !== 1) return;
    each(node, "dialog[data-jm-modal]", function (dialog) {
      if (!dialog.open) return;
      kb(dialog, "resume");
      reopen.add(dialog.id);
    });
  }

  function reopenReplaced(id) {
    var dialog = document.getElementById(id);
    if (!dialog || !dialog.matches("dialog[data-jm-modal]")) return;
    openModal(dialog);
    var box = modalBox(dialog);
    if (box) box.scrollTop = boxScroll.get(id) || 0;
  }

  var observer = new MutationObserver(function (mutations) {
    var grown = new Set();
    var uncovered = new Set();
    var reopen = new Set();
    mutations.forEach(function (m) {
      m.removedNodes.forEach(function (node) {
        removedDialogs(node, reopen);
        if (node.nodeType === 1 && node.hasAttribute("data-jm-overlay")) uncovered.add(m.target);
      });
      m.addedNodes.forEach(function (node) {
        if (node.nodeType !== 1) return;
        if (m.target.hasAttribute && m.target.hasAttribute("data-jm-log-lines")) { grown.add(m.target); return; }
        scan(node);
      });
    });
    reopen.forEach(reopenReplaced);
    grown.forEach(function (lines) { if (lines.isConnected) linesAdded(lines); });
    uncovered.forEach(uncover);
    focusInOpenDialog();
    syncTicker();
  });

  // --- Events ----------------------------------------------------------------------------------

  document.addEventListener("click", function (evt) {
    var target = evt.target;
    if (!target.closest) return;
    var opener = target.closest("[data-jm-open-modal]");
    if (opener) { openModal(document.getElementById(opener.getAttribute("data-jm-open-modal"))); return; }
    var jump = target.closest("[data-jm-log-jump]");
    if (jump) {
      var container = logRoot(jump).querySelector("[data-jm-log]");
      if (container) { logStateOf(container).following = true; placeLog(container); }
      return;
    }
    if (target.closest("[data-jm-notify-toggle]")) toggleNotifications();
  });

  document.addEventListener("change", function (evt) {
    var target = evt.target;
    if (target.matches("input[data-jm-tab]") && target.checked) {
      tabState.set(target.name, target.id);
      var dialog = dialogOf(target);
      if (dialog) refreshLogs(dialog);
    }
    if (target.matches("select[data-jm-log-filter]")) {
      var container = logRoot(target).querySelector("[data-jm-log]");
      if (container) {
        logStateOf(container).filter = target.value;
        container.setAttribute("data-filter", target.value);
        updateEmptyNotice(container);
        placeLog(container);
      }
    }
  });

  // Scroll events do not bubble, so listen in the capture phase.
  document.addEventListener("scroll", function (evt) {
    var container = evt.target;
    if (!container.matches) return;
    if (container.matches("dialog[data-jm-modal] > .modal-box")) {
      boxScroll.set(container.parentElement.id, container.scrollTop);
      return;
    }
    if (!container.matches("[data-jm-log]") || !isShown(container)) return;
    var state = logStateOf(container);
    state.following = atBottom(container);
    state.scrollTop = container.scrollTop;
    setJumpVisible(container, !state.following);
  }, true);

  // --- Focus ---------------------------------------------------------------------------------
  // The browser returns focus to the element that opened a dialog, but here that element is often
  // gone: the trigger is swapped for the progress button by the same response that opens the modal,
  // and the footer's Cancel button is swapped out when the job ends. Focus left on <body> is lost
  // for keyboard users, so it goes to the nearest control that still exists.

  function focusLost() {
    var active = document.activeElement;
    return !active || active === document.body || !active.isConnected;
  }

  function focusAfterClose(dialog) {
    if (!focusLost() && !dialog.contains(document.activeElement)) return;
    var target = document.querySelector('[data-jm-open-modal="' + dialog.id + '"]') ||
                 document.querySelector("[data-jm-trigger]:not([disabled])");
    if (target) target.focus();
  }

  // The last focused element inside a monitor dialog, and that dialog's id.
  var lastFocused = null, lastFocusedDialog = null;
  document.addEventListener("focusin", function (evt) {
    var dialog = evt.target.closest && evt.target.closest("dialog[data-jm-modal]");
    lastFocused = dialog ? evt.target : null;
    lastFocusedDialog = dialog ? dialog.id : null;
  });

  // Only when the focused control itself was swapped out: a click on plain text also leaves focus
  // on <body>, and moving focus then would surprise the user.
  function focusInOpenDialog() {
    if (!lastFocused || lastFocused.isConnected || !focusLost()) return;
    var dialog = document.getElementById(lastFocusedDialog);
    lastFocused = lastFocusedDialog = null;
    if (!dialog || !dialog.open) return;
    var target = dialog.querySelector("[data-jm-cancel]:not([disabled])") ||
                 dialog.querySelector(".modal-action button") || dialog.querySelector("button");
    if (target) target.focus();
  }

  // The dialog's close event does not bubble either.
  document.addEventListener("close", function (evt) {
    if (!evt.target.matches || !evt.target.matches("dialog[data-jm-modal]")) return;
    kb(evt.target, "resume");
    focusAfterClose(evt.target);
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
    syncTicker();
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
