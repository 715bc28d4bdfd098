// wirechat's client: the server renders, this places. It applies {selector, html, swap}
// frames, sends the user's actions, and reconnects (resuming where it left off).
(() => {
  'use strict';
  const $ = (s) => document.querySelector(s);
  const list = () => $('#messages-list');
  if (!list()) return;

  let socket = null;
  let attempts = 0;
  let gapTimer = null;
  const timers = {};

  const seqOf = (el) => Number(el.dataset.seq);
  const newestSeq = () => { const a = list().lastElementChild; return a ? seqOf(a) : 0; };
  const activeRoom = () => $('#group-name [data-room-id]')?.dataset.roomId;
  const nearBottom = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 80;

  function send(action, data) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ action, data }));
  }

  function status(text) { $('#connection').textContent = text; }

  // Articles go where their seq says, so a late or repeated message never lands twice or
  // out of order; any element whose id is already on the page replaces it.
  function place(target, el, swap) {
    const existing = el.id && document.getElementById(el.id);
    if (existing) return existing.replaceWith(el);
    if (el.dataset && el.dataset.seq !== undefined) {
      let before = target.lastElementChild;
      while (before && seqOf(before) > seqOf(el)) before = before.previousElementSibling;
      return before ? before.after(el) : target.prepend(el);
    }
    swap === 'afterbegin' ? target.prepend(el) : target.append(el);
  }

  function apply(frame) {
    const target = document.querySelector(frame.selector);
    if (!target) return;
    // The typing notice goes to the whole room; the typist needs no notice of themself.
    if (frame.selector === '#typing' && frame.html.includes(`data-user="${document.body.dataset.me}"`)) return;
    const messages = target === list();
    const stick = messages && nearBottom(target);
    const height = target.scrollHeight;
    switch (frame.swap) {
      case 'remove': target.remove(); break;
      case 'outerHTML': target.outerHTML = frame.html; break;
      case 'beforeend':
      case 'afterbegin': {
        const t = document.createElement('template');
        t.innerHTML = frame.html;
        const els = [...t.content.children];
        if (frame.swap === 'afterbegin') els.reverse();
        els.forEach((el) => place(target, el, frame.swap));
        // A further page of groups: show where it starts.
        if (target.id === 'browse-results' && els[0]) els[0].scrollIntoView({ block: 'nearest' });
        break;
      }
      default: target.innerHTML = frame.html;
    }
    if (messages) {
      if (frame.swap === 'afterbegin') target.scrollTop += target.scrollHeight - height;
      else if (stick || frame.swap === 'innerHTML') target.scrollTop = target.scrollHeight;
      // Someone reading older messages is not yanked down; a pill offers the way back.
      else $('#new-pill').hidden = false;
      if (frame.swap === 'innerHTML') $('#new-pill').hidden = true;
      checkGaps();
    }
    if (frame.selector === '#load-older' || frame.selector === '#errors') loadingOlder = false;
    if (frame.selector === '#errors' || frame.selector === '#typing') {
      clearTimeout(timers[frame.selector]);
      // A message with something to do (Unblock) stays until the next one.
      if (!target.querySelector('button')) timers[frame.selector] = setTimeout(() => { target.innerHTML = ''; }, 5000);
    }
    if (frame.selector === '#group-name') { status(''); markActive(); }
  }

  // A gap in seqs means a message is still on its way (another node published it later)
  // or was missed; if it has not filled in a moment, ask for everything after it.
  function firstGap() {
    let prev = null;
    for (const a of list().children) {
      if (prev !== null && seqOf(a) > prev + 1) return prev;
      prev = seqOf(a);
    }
    return null;
  }
  let gapDelay = 1000;
  function checkGaps() {
    clearTimeout(gapTimer);
    if (firstGap() === null) { gapDelay = 1000; return; }
    gapTimer = setTimeout(() => {
      const after = firstGap();
      if (after === null) return;
      send('Catch up', { afterSeq: after });
      // Keep asking, less and less often, while the gap stays (a refusal, a quiet room).
      gapDelay = Math.min(gapDelay * 2, 30000);
      checkGaps();
    }, gapDelay);
  }

  function localTimes() {
    document.querySelectorAll('time[data-ts]:not([data-local])').forEach((t) => {
      const d = new Date(Number(t.dataset.ts));
      t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      t.title = d.toLocaleString();
      t.dataset.local = '1';
    });
    const me = document.body.dataset.me;
    document.querySelectorAll('.dot[data-user]').forEach((d) => {
      const id = d.dataset.user;
      // Listed under "Online", or (past the list's cap) marked as a partner who is online.
      d.classList.toggle('online', !!(document.getElementById('person-' + id) || document.getElementById('on-' + id)));
    });
    // Consecutive messages by one author within five minutes share a header; a new day
    // gets a divider.
    let prev = null;
    for (const a of list().children) {
      a.classList.toggle('mine', a.dataset.author === me);
      const ts = Number(a.querySelector('time')?.dataset.ts);
      const day = new Date(ts).toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric' });
      const prevTs = prev && Number(prev.querySelector('time')?.dataset.ts);
      a.classList.toggle('continued', !!prev && prev.dataset.author === a.dataset.author && ts - prevTs < 300000);
      if (!prev || new Date(prevTs).toDateString() !== new Date(ts).toDateString()) a.dataset.day = day;
      else delete a.dataset.day;
      prev = a;
    }
  }

  function markActive() {
    const room = activeRoom();
    document.querySelectorAll('a[data-room-id]').forEach((a) => {
      if (a.dataset.roomId === room) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    });
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const room = activeRoom();
    const resume = room ? `?room=${encodeURIComponent(room)}&after=${newestSeq()}` : '';
    let opened = false;
    socket = new WebSocket(`${proto}//${location.host}/ws/chat/${resume}`);
    socket.onopen = () => { opened = true; attempts = 0; };
    socket.onmessage = (e) => {
      try { apply(JSON.parse(e.data)); } catch (err) { console.error(err); }
      localTimes();
    };
    socket.onclose = async (e) => {
      // Logged out (on this tab or another, on any node): nothing to reconnect to.
      if (e.code === 4001) return location.assign('/login');
      status('Reconnecting…');
      if (!opened && attempts > 1) {
        // Refused handshakes are often an expired session: let the server decide.
        const r = await fetch('/', { redirect: 'manual' }).catch(() => null);
        if (r && r.type === 'opaqueredirect') return location.assign('/login');
      }
      const delay = Math.min(15000, 300 * 2 ** attempts) * (0.5 + Math.random());
      attempts += 1;
      setTimeout(connect, delay);
    };
  }

  const browse = $('#browse-dialog');
  document.addEventListener('click', (e) => {
    const link = e.target.closest('a[data-group-name]');
    if (link) {
      e.preventDefault();
      send('Change group', { groupName: link.dataset.groupName, isGroup: link.dataset.isGroup === 'true' });
      if (browse.open) browse.close();
      $('#message-text').focus();
    }
    // Buttons the server rendered with the action they stand for (leave, hide, block…).
    const action = e.target.closest('button[data-action]');
    if (action && (!action.dataset.confirm || confirm(action.dataset.confirm))) {
      send(action.dataset.action, JSON.parse(action.dataset.payload || '{}'));
    }
    if (e.target.closest('#browse-open')) {
      $('#browse-query').value = '';
      send('Browse groups', { query: '' });
      browse.showModal();
    }
    const older = e.target.closest('button#load-older');
    if (older) send('Load older', { beforeSeq: Number(older.dataset.beforeSeq) });
  });

  document.addEventListener('submit', (e) => {
    const form = e.target;
    // Real forms (log out) go to the server; dialog forms close their dialog.
    if (form.method === 'post' || form.method === 'dialog') return;
    e.preventDefault();
    const input = form.querySelector('input, textarea');
    const value = input.value;
    if (form.id === 'message-form') send('New message', { message: value });
    if (form.id === 'new-group') send('Create group', { groupName: value });
    if (form.id === 'new-direct') send('Change group', { groupName: value, isGroup: false });
    if (form.id === 'browse-form') return send('Browse groups', { query: value });
    input.value = '';
    $('#message-text').focus();
  });

  $('#blocked').addEventListener('toggle', (e) => { if (e.target.open) send('Blocked people', {}); });

  let loadingOlder = false;
  list().addEventListener('scroll', () => {
    const el = list();
    if (nearBottom(el)) $('#new-pill').hidden = true;
    const older = $('button#load-older');
    if (el.scrollTop < 40 && older && !loadingOlder) {
      loadingOlder = true;
      send('Load older', { beforeSeq: Number(older.dataset.beforeSeq) });
    }
  });
  $('#new-pill').addEventListener('click', () => {
    list().scrollTop = list().scrollHeight;
    $('#new-pill').hidden = true;
  });

  let lastTyping = 0;
  document.addEventListener('keydown', (e) => {
    if (e.target.id !== 'message-text') return;
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      e.target.form.requestSubmit();
    } else if (Date.now() - lastTyping > 2000) {
      lastTyping = Date.now();
      send('Typing', {});
    }
  });

  connect();
})();
