// wirechat's client: the server renders, this places. It applies {selector, html, swap}
// frames, sends the user's actions, keeps what the user typed until the server has it
// (the outbox), and reconnects, resuming where it left off.
(() => {
  'use strict';
  const $ = (s) => document.querySelector(s);
  const list = () => $('#messages-list');
  if (!list()) return;
  const me = document.body.dataset.me;
  const composer = $('#message-text');
  const MAX = Number(composer.dataset.max) || 4000;
  // On a phone, Enter makes a new line (the Send button sends) and picking a room does not
  // open the keyboard.
  const touch = matchMedia('(pointer: coarse)').matches;

  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let gapTimer = null;
  let gapDelay = 1000;
  let loadingOlder = false;
  // Set while the address changes because of Back/Forward, so it is not pushed again.
  let fromHistory = false;
  const timers = {};

  const seqOf = (el) => Number(el.dataset.seq);
  // Every change to a room's history takes its next seq: a message, an edit, a deletion.
  // An article carries its seq and, once changed, the seq of its latest change (its rev).
  const revOf = (el) => Number(el.dataset.rev || el.dataset.seq);
  // Every change through `through` is on the page; `above` holds those seen past a gap.
  let through = 0;
  const above = new Set();
  const closeUp = () => { while (above.delete(through + 1)) through += 1; };
  function saw(seq) {
    if (!(seq > through)) return;
    above.add(seq);
    closeUp();
  }
  // The server's word (after a room's history or a catch-up): a change replaced by a later
  // one leaves a seq that no article carries.
  function seenThrough(seq) {
    if (seq > through) through = seq;
    for (const s of above) if (s <= through) above.delete(s);
    closeUp();
  }
  for (const a of list().children) if (a.dataset.seq) through = Math.max(through, revOf(a));
  const activeRoom = () => $('#group-name [data-room-id]')?.dataset.roomId;
  const activeTitle = () => $('#group-name')?.textContent.trim() || '';
  const nearBottom = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  const isOpen = () => socket && socket.readyState === WebSocket.OPEN;

  function send(action, data) {
    if (isOpen()) socket.send(JSON.stringify({ action, data }));
    return isOpen();
  }

  // A UUID v4 from the browser's random numbers (randomUUID needs a secure context).
  function uuid() {
    if (crypto.randomUUID && isSecureContext) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // ---- The outbox: sent messages the server has not confirmed yet. Kept in sessionStorage
  // (a reload keeps them, closing the tab does not), shown dimmed under the messages, and
  // sent one at a time, in order, to the room each was written in, while the socket is
  // open. A message's clientId makes sending it twice harmless: the server stores it once.
  const OUTBOX = `wirechat-outbox-${me}`;
  const DRAFTS = `wirechat-drafts-${me}`;
  const load = (key, empty) => { try { return JSON.parse(sessionStorage.getItem(key)) || empty; } catch (_) { return empty; } };
  const store = (key, value) => { try { sessionStorage.setItem(key, JSON.stringify(value)); } catch (_) { /* full: kept in memory */ } };
  let outbox = load(OUTBOX, []);
  const drafts = load(DRAFTS, {});
  const inFlight = new Set();
  let flushTimer = null;
  const saveOutbox = () => store(OUTBOX, outbox);

  function pendingItem(m) {
    const li = document.createElement('li');
    li.id = `pending-${m.clientId}`;
    li.className = m.failed ? 'pending failed' : 'pending';
    const body = document.createElement('p');
    body.className = 'body';
    body.dir = 'auto';
    body.textContent = m.text;
    const status = document.createElement('span');
    status.className = 'status';
    status.textContent = m.failed ? `Not sent: ${m.failed}` : (isOpen() ? 'Sending…' : 'Waiting for the connection…');
    if (m.room !== activeRoom()) status.textContent += ` (in ${m.title || 'another room'})`;
    li.append(body, status);
    if (m.failed) {
      for (const [what, label] of [['retry', 'Retry'], ['edit', 'Edit'], ['discard', 'Delete']]) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'link';
        b.dataset.outbox = what;
        b.dataset.clientId = m.clientId;
        b.textContent = label;
        li.append(b);
      }
    }
    return li;
  }

  function renderOutbox() {
    const box = $('#outbox');
    box.replaceChildren(...outbox.map(pendingItem));
    box.scrollTop = box.scrollHeight;
  }

  // Sends the first message waiting, unless one is on its way: one at a time keeps their
  // order even when the server asks to slow down.
  function flushOutbox() {
    clearTimeout(flushTimer);
    if (!isOpen() || inFlight.size) return;
    const m = outbox.find((x) => !x.failed);
    if (!m) return;
    // Stored already (its answer was lost, and the history shows it): nothing to send.
    if (list().querySelector(`article[data-client-id="${m.clientId}"]`)) return confirmed(m.clientId);
    const wait = (m.notBefore || 0) - Date.now();
    if (wait > 0) { flushTimer = setTimeout(flushOutbox, wait); return; }
    inFlight.add(m.clientId);
    send('New message', { message: m.text, clientId: m.clientId, roomId: m.room, ...(m.replyTo ? { replyTo: m.replyTo } : {}) });
  }

  function confirmed(clientId) {
    const i = outbox.findIndex((m) => m.clientId === clientId);
    if (i < 0) return;
    outbox.splice(i, 1);
    inFlight.delete(clientId);
    saveOutbox();
    document.getElementById(`pending-${clientId}`)?.remove();
    flushOutbox();
  }

  function refused(clientId, reason, retry) {
    const m = outbox.find((x) => x.clientId === clientId);
    if (!m) return;
    inFlight.delete(clientId);
    if (retry) {
      // Too fast, or not stored: it goes again by itself in a moment, still first.
      m.notBefore = Date.now() + 1500;
      flushOutbox();
      return;
    }
    m.failed = reason;
    saveOutbox();
    renderOutbox();
    flushOutbox();
  }

  // ---- Placing the server's frames.

  // Articles go where their seq says, so a late or repeated message never lands twice or
  // out of order; any element whose id is already on the page replaces it.
  function place(target, el, swap) {
    // A page of history read before a change that came first: the change wins.
    const newer = el.id && latest.get(el.id);
    if (newer && revOf(newer) > revOf(el)) el = newer.cloneNode(true);
    const existing = el.id && document.getElementById(el.id);
    // An older state of a message (a catch-up read before its latest edit) loses.
    if (existing) return revOf(existing) > revOf(el) ? undefined : existing.replaceWith(el);
    // A changed message older than anything shown is not brought into view by a change or
    // a catch-up; a page of older history shows it where it belongs.
    if (swap !== 'afterbegin' && el.dataset?.rev && target.firstElementChild
      && seqOf(el) < seqOf(target.firstElementChild)) return;
    if (el.dataset && el.dataset.seq !== undefined) {
      let before = target.lastElementChild;
      while (before && seqOf(before) > seqOf(el)) before = before.previousElementSibling;
      return before ? before.after(el) : target.prepend(el);
    }
    swap === 'afterbegin' ? target.prepend(el) : target.append(el);
  }

  // The first message at least partly in view, and how far from the top of the view.
  function anchor() {
    const box = list();
    const top = box.getBoundingClientRect().top;
    for (const a of box.children) {
      const r = a.getBoundingClientRect();
      if (r.bottom > top) return { el: a, offset: r.top - top };
    }
    return null;
  }

  function apply(frame) {
    // A message posted to a room not shown here is stored: the server says so.
    if (frame.selector.startsWith('#pending-') && frame.swap === 'remove') return confirmed(frame.selector.slice(9));
    if (frame.selector === '#room-seq') { seenThrough(Number(frame.html)); return checkGaps(); }
    // An edited or deleted message: its article in its latest state, where it is shown.
    if (frame.selector.startsWith('#msg-') && frame.swap === 'outerHTML') return changed(frame);
    const target = document.querySelector(frame.selector);
    if (!target) return;
    // The typing notice goes to the whole room; the typist needs no notice of themself.
    if (frame.selector === '#typing' && frame.html.includes(`data-user="${me}"`)) return;
    const messages = target === list();
    const stick = messages && nearBottom(target);
    // Older history goes above what is read: the message in view stays where it is.
    const kept = messages && frame.swap === 'afterbegin' ? anchor() : null;
    let added = [];
    switch (frame.swap) {
      case 'remove': target.remove(); break;
      case 'outerHTML': target.outerHTML = frame.html; break;
      case 'beforeend':
      case 'afterbegin': {
        const t = document.createElement('template');
        t.innerHTML = frame.html;
        added = [...t.content.children];
        if (messages && frame.swap === 'beforeend') added.forEach((a) => a.dataset.seq && saw(revOf(a)));
        const els = frame.swap === 'afterbegin' ? [...added].reverse() : added;
        els.forEach((el) => place(target, el, frame.swap));
        // A further page of groups: show where it starts.
        if ((target.id === 'browse-results' || target.id === 'search-results') && added[0]) added[0].scrollIntoView({ block: 'nearest' });
        break;
      }
      default:
        // A room's history afresh: its seq follows.
        if (messages) { through = 0; above.clear(); latest.clear(); }
        target.innerHTML = frame.html;
    }
    if (messages) {
      arrange();
      if (kept) target.scrollTop += kept.el.getBoundingClientRect().top - target.getBoundingClientRect().top - kept.offset;
      else if (stick || frame.swap === 'innerHTML') target.scrollTop = target.scrollHeight;
      // Someone reading older messages is not yanked down; a pill offers the way back.
      else $('#new-pill').hidden = false;
      if (frame.swap === 'innerHTML') $('#new-pill').hidden = true;
      for (const a of target.querySelectorAll('article[data-client-id]')) {
        if (outbox.length && outbox.some((m) => m.clientId === a.dataset.clientId)) confirmed(a.dataset.clientId);
      }
      if (frame.swap === 'beforeend') { announce(added); stopTyping(added); mentionsOfMe(added); requoteFrom(added); }
      if (frame.swap === 'innerHTML' && pendingJump) { const id = pendingJump; pendingJump = null; jumpTo(id); }
      checkGaps();
    }
    if (frame.selector === '#load-older' || frame.selector === '#errors') loadingOlder = false;
    if (seeking && frame.selector === '#load-older') jumpTo(seeking.id);
    if (frame.selector === '#errors') {
      const refusal = target.querySelector('p.error[data-client-id]');
      if (refusal) {
        refused(refusal.dataset.clientId, refusal.textContent, refusal.dataset.retry === 'true');
        // The message itself says it, where it is.
        target.innerHTML = '';
        return;
      }
      formFeedback(target);
    }
    if (frame.selector === '#errors' || frame.selector === '#typing') {
      clearTimeout(timers[frame.selector]);
      // A message with something to do (Unblock) stays until the next one.
      if (!target.querySelector('button')) timers[frame.selector] = setTimeout(() => { target.innerHTML = ''; }, 8000);
    }
    if (frame.selector === '#group-name') entered();
    if (frame.selector.startsWith('#unread-') || frame.selector.startsWith('#mentions-') || frame.selector === '#aside') updateTitle();
    if (frame.selector === '#aside') offerNotifications();
    if (frame.selector === '#search-results') localTimes();
    if (frame.selector.startsWith('#mentions-') && frame.html) {
      const room = target.closest('a')?.querySelector('.room-name')?.textContent || 'another room';
      notify(`You were mentioned in ${room}`, 'Open wirechat to read it.');
    }
  }

  // Someone whose message just arrived is no longer typing it.
  function stopTyping(articles) {
    const typing = $('#typing [data-user]');
    if (typing && articles.some((a) => a.dataset?.author === typing.dataset.user)) $('#typing').innerHTML = '';
  }

  // What is typed and not sent stays with its room.
  let draftRoom = null;
  function switchDraft() {
    const room = activeRoom();
    if (room === draftRoom) return;
    if (draftRoom) { drafts[draftRoom] = composer.value; if (!composer.value) delete drafts[draftRoom]; }
    composer.value = drafts[room] || '';
    draftRoom = room;
    store(DRAFTS, drafts);
    fitComposer();
  }

  // A room is shown: the banner goes, the address follows, its draft comes back, and what
  // waits in the outbox is shown and sent.
  function entered() {
    showConnection(null);
    if (replying && replying.room !== activeRoom()) stopReply(false);
    switchDraft();
    markActive();
    updateAddress();
    updateTitle();
    renderOutbox();
    flushOutbox();
    if (pendingForm) {
      pendingForm.querySelector('input').value = '';
      pendingForm = null;
    }
    document.body.classList.remove('rooms-open');
    $('#rooms-toggle').setAttribute('aria-expanded', 'false');
  }

  // New messages from others, read out one by one (the list itself is not a live region:
  // a room's history would be read out whole).
  function announce(articles) {
    const said = articles
      .filter((a) => a.matches?.('article') && a.dataset.author !== me)
      .map((a) => `${a.querySelector('.author')?.textContent || ''}: ${(a.querySelector('.body')?.textContent || '').slice(0, 200)}`);
    if (said.length) $('#announce').textContent = said.join('. ');
  }

  // A gap in seqs means a message is still on its way (another node published it later)
  // or was missed; if it has not filled in a moment, ask for everything after it, and keep
  // asking, less and less often, while it stays.
  function firstGap() {
    return above.size ? through : null;
  }

  // The latest state of changed messages not on the page (older than what it shows, or
  // not arrived yet), so that a page of history read before the change cannot bring the
  // old text back. A few hundred at most.
  const latest = new Map();
  function changed(frame) {
    const t = document.createElement('template');
    t.innerHTML = frame.html;
    const el = t.content.firstElementChild;
    if (!el) return;
    saw(revOf(el));
    requote(el);
    const existing = document.getElementById(el.id);
    if (existing && revOf(existing) <= revOf(el)) {
      const editing = existing.querySelector('.edit-form') && existing.contains(document.activeElement);
      existing.replaceWith(el);
      arrange();
      if (editing) el.querySelector('.msg-actions button')?.focus();
    } else if (!existing) {
      latest.delete(el.id);
      latest.set(el.id, el);
      if (latest.size > 300) latest.delete(latest.keys().next().value);
      // A message this page missed (its own frame lost on the way) shows in its place.
      place(list(), el.cloneNode(true), 'beforeend');
      arrange();
    }
    checkGaps();
  }
  // A reply that arrives quotes its original as the page shows it, if it does (changed
  // between the reply's check and its arrival).
  function requoteFrom(articles) {
    for (const a of articles) {
      const id = a.querySelector?.('a.quote')?.dataset.replyTo;
      const original = id && document.getElementById(`msg-${id}`);
      if (original) requote(original);
    }
  }
  // Replies on the page quote a changed message as it now is.
  function requote(el) {
    const text = el.classList.contains('deleted') ? null : (el.dataset.src ?? el.querySelector('.body')?.textContent ?? '');
    for (const snippet of list().querySelectorAll(`a.quote[data-reply-to="${el.id.slice(4)}"] .snippet`)) {
      snippet.classList.toggle('tombstone', text === null);
      snippet.textContent = text === null ? 'a deleted message' : [...text].slice(0, 120).join('') + ([...text].length > 120 ? '…' : '');
    }
  }
  function checkGaps() {
    clearTimeout(gapTimer);
    if (firstGap() === null) { gapDelay = 1000; return; }
    gapTimer = setTimeout(() => {
      const after = firstGap();
      if (after === null) return;
      send('Catch up', { afterSeq: after });
      gapDelay = Math.min(gapDelay * 2, 30000);
      checkGaps();
    }, gapDelay);
  }

  // Local times, dots for who is online, the author shown once for a run of messages by one
  // person, a divider for each new day.
  function localTimes() {
    document.querySelectorAll('time[data-ts]:not([data-local])').forEach((t) => {
      const d = new Date(Number(t.dataset.ts));
      t.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      t.title = d.toLocaleString();
      t.dataset.local = '1';
    });
  }
  function arrange() {
    localTimes();
    let prev = null;
    for (const a of list().children) {
      a.classList.toggle('mine', a.dataset.author === me);
      // Every message can be reacted to; one's own edited and deleted (the server checks
      // it is theirs).
      if (!a.classList.contains('deleted') && !a.querySelector('.msg-actions')) {
        const actions = document.createElement('div');
        actions.className = 'msg-actions';
        actions.innerHTML = '<button type="button" class="link" data-act="reply">Reply</button>'
          + '<button type="button" class="link" data-act="pick" title="Add a reaction">React</button>'
          + (a.dataset.author === me
            ? '<button type="button" class="link" data-act="edit">Edit</button>'
              + '<button type="button" class="link" data-act="delete">Delete</button>'
            : '');
        a.querySelector('.bubble')?.append(actions);
      }
      for (const m of a.querySelectorAll(`.mention[data-mention="${me}"]`)) m.classList.add('me');
      // One's own reactions show pressed.
      for (const chip of a.querySelectorAll('button.reaction')) {
        chip.setAttribute('aria-pressed', String((chip.dataset.who || '').split(' ').includes(me)));
      }
      const ts = Number(a.querySelector('time')?.dataset.ts);
      const day = new Date(ts).toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric' });
      const prevTs = prev && Number(prev.querySelector('time')?.dataset.ts);
      a.classList.toggle('continued', !!prev && prev.dataset.author === a.dataset.author && ts - prevTs < 300000);
      if (!prev || new Date(prevTs).toDateString() !== new Date(ts).toDateString()) a.dataset.day = day;
      else delete a.dataset.day;
      prev = a;
    }
  }

  function dots() {
    // One's own entry in the Online list leads nowhere.
    const mine = document.querySelector(`#person-${me} a[data-group-name]`);
    if (mine) {
      mine.removeAttribute('data-group-name');
      mine.removeAttribute('href');
      mine.querySelector('.room-name')?.append(' (you)');
    }
    document.querySelectorAll('.dot[data-user]').forEach((d) => {
      const id = d.dataset.user;
      // Listed under "Online", or (past the list's cap) marked as a partner who is online.
      d.classList.toggle('online', !!(document.getElementById('person-' + id) || document.getElementById('on-' + id)));
    });
  }

  function markActive() {
    const room = activeRoom();
    document.querySelectorAll('a[data-room-id]').forEach((a) => {
      if (a.dataset.roomId === room) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    });
  }

  // ---- The room in the address: /r/<group> or /dm/<user>; Back and Forward move between
  // rooms, and a reload or a link opens the room it names.
  function roomPath() {
    const title = activeTitle();
    if (!activeRoom() || !title) return '/';
    return title.startsWith('#') ? `/r/${encodeURIComponent(title.slice(1))}` : `/dm/${encodeURIComponent(title)}`;
  }
  // A room's name from an address's path, or null (a malformed escape names no room).
  function roomIn(path) {
    const m = path.match(/^\/(r|dm)\/([^/]+)\/?$/);
    if (!m) return null;
    try {
      return { name: decodeURIComponent(m[2]), isGroup: m[1] === 'r' };
    } catch (_) {
      return null;
    }
  }
  const namedRoom = () => roomIn(location.pathname);
  let shownOnce = false;
  function updateAddress() {
    const path = roomPath();
    if (path !== location.pathname) {
      // The first room shown names the page's own entry; each room after, a new one.
      if (fromHistory || !shownOnce) history.replaceState(null, '', path);
      else history.pushState(null, '', path);
    }
    shownOnce = true;
    fromHistory = false;
  }
  addEventListener('popstate', () => {
    const room = namedRoom();
    if (!room) return;
    fromHistory = true;
    send('Change group', { groupName: room.name, isGroup: room.isGroup });
  });

  function updateTitle() {
    const total = (selector) => [...document.querySelectorAll(selector)]
      .reduce((sum, b) => sum + (parseInt(b.textContent.replace('@', ''), 10) || 0), 0);
    const unread = total('#aside .badge');
    const mentioned = total('#aside .mention-badge');
    const counts = [mentioned ? `@${mentioned}` : '', unread ? `${unread}` : ''].filter(Boolean).join(' · ');
    const room = activeTitle();
    document.title = `${counts ? `(${counts}) ` : ''}${room ? `${room} · ` : ''}wirechat`;
    // On a phone the sidebar is behind "Rooms": the button says what waits there.
    const toggle = $('#rooms-toggle');
    if (counts) toggle.dataset.counts = counts; else delete toggle.dataset.counts;
  }

  // ---- Mentions: one's own name marked strongly, a notification when the tab is hidden
  // (once the person allowed it, asked on a click), and names offered while typing @.
  function notify(title, body) {
    if (!document.hidden || !('Notification' in window) || Notification.permission !== 'granted') return;
    try { new Notification(title, { body, tag: 'wirechat-mention' }); } catch (_) { /* not allowed here */ }
  }
  function mentionsOfMe(articles) {
    for (const a of articles) {
      if (a.dataset?.author === me || !a.querySelector?.(`.mention[data-mention="${me}"]`)) continue;
      notify(`${a.querySelector('.author')?.textContent || 'Someone'} mentioned you in ${activeTitle()}`,
        (a.querySelector('.body')?.textContent || '').slice(0, 200));
    }
  }
  // Offered in the sidebar (which the server renders anew) until answered.
  function offerNotifications() {
    const button = $('#notify-on');
    if (button) button.hidden = !('Notification' in window) || Notification.permission !== 'default';
  }
  document.addEventListener('click', async (e) => {
    if (!e.target.closest('#notify-on')) return;
    try { await Notification.requestPermission(); } catch (_) { /* refused */ }
    offerNotifications();
  });
  offerNotifications();

  // Names to complete an @ with: who is in the room, and who wrote what it shows.
  const suggestions = $('#mention-suggestions');
  let suggesting = null;
  function mentionAtCaret() {
    const before = composer.value.slice(0, composer.selectionStart);
    const m = /(^|[^A-Za-z0-9._-])@([A-Za-z0-9._-]{0,32})$/.exec(before);
    return m ? { from: before.length - m[2].length - 1, typed: m[2].toLowerCase() } : null;
  }
  function suggestMentions() {
    const at = mentionAtCaret();
    const names = new Set();
    if (at) {
      const known = [...document.querySelectorAll('#room-members bdi, #messages-list .author bdi')].map((b) => b.textContent.trim());
      const mine = $('#logged-user').textContent.trim();
      for (const name of known) {
        if (name && name !== mine && name.toLowerCase().startsWith(at.typed)) names.add(name);
        if (names.size === 6) break;
      }
    }
    suggesting = names.size ? { ...at, index: 0 } : null;
    suggestions.hidden = !suggesting;
    suggestions.innerHTML = '';
    [...names].forEach((name, i) => {
      const li = document.createElement('li');
      li.role = 'option';
      li.id = `mention-option-${i}`;
      li.textContent = `@${name}`;
      li.dataset.name = name;
      li.setAttribute('aria-selected', String(i === 0));
      suggestions.append(li);
    });
    if (suggesting) composer.setAttribute('aria-activedescendant', 'mention-option-0');
    else composer.removeAttribute('aria-activedescendant');
  }
  function pickMention(name) {
    if (!suggesting) return;
    const end = composer.selectionStart;
    composer.value = `${composer.value.slice(0, suggesting.from)}@${name} ${composer.value.slice(end)}`;
    const caret = suggesting.from + name.length + 2;
    composer.setSelectionRange(caret, caret);
    suggesting = null;
    suggestMentions();
    composer.focus();
  }
  composer.addEventListener('input', suggestMentions);
  composer.addEventListener('keydown', (e) => {
    if (!suggesting) return;
    const options = [...suggestions.children];
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      suggesting.index = (suggesting.index + (e.key === 'ArrowDown' ? 1 : options.length - 1)) % options.length;
      options.forEach((o, i) => o.setAttribute('aria-selected', String(i === suggesting.index)));
      composer.setAttribute('aria-activedescendant', options[suggesting.index].id);
    } else if (e.key === 'Enter' || e.key === 'Tab') {
      e.preventDefault();
      e.stopPropagation();
      pickMention(options[suggesting.index].dataset.name);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      suggesting = null;
      suggestions.hidden = true;
    }
  });
  suggestions.addEventListener('mousedown', (e) => {
    const option = e.target.closest('li[data-name]');
    if (option) { e.preventDefault(); pickMention(option.dataset.name); }
  });

  // ---- The connection: a banner while it is down, with "Retry now"; the first retry
  // comes well under a second after a drop, then less and less often.
  function showConnection(text) {
    const banner = $('#connection');
    banner.hidden = !text;
    $('#connection-text').textContent = text || '';
    document.body.classList.toggle('offline', !!text);
    if (!text) for (const li of document.querySelectorAll('#outbox .status')) if (li.textContent.startsWith('Waiting')) li.textContent = 'Sending…';
  }

  function connect() {
    clearTimeout(retryTimer);
    if (socket && socket.readyState <= WebSocket.OPEN) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const room = activeRoom();
    const named = namedRoom();
    // Resume the room shown, unless the address names another (a room picked offline).
    let query = '';
    if (room && (!named || roomPath() === location.pathname)) query = `?room=${encodeURIComponent(room)}&after=${through}`;
    else if (named) query = named.isGroup ? `?group=${encodeURIComponent(named.name)}` : `?with=${encodeURIComponent(named.name)}`;
    let opened = false;
    const ws = new WebSocket(`${proto}//${location.host}/ws/chat/${query}`);
    socket = ws;
    ws.onopen = () => { opened = true; attempts = 0; inFlight.clear(); };
    ws.onmessage = (e) => {
      try { apply(JSON.parse(e.data)); } catch (err) { console.error(err); }
      dots();
    };
    ws.onclose = async (e) => {
      if (socket !== ws) return;
      socket = null;
      inFlight.clear();
      // Logged out (on this tab or another, on any node): nothing to reconnect to.
      if (e.code === 4001) return location.assign('/login');
      // A room picked while offline opens once the connection is back: say so.
      const waiting = namedRoom() && activeRoom() && roomPath() !== location.pathname.replace(/\/$/, '');
      showConnection(waiting ? `Offline: ${namedRoom().isGroup ? '#' : ''}${namedRoom().name} opens when the connection is back. Reconnecting…` : 'Connection lost. Reconnecting…');
      renderOutbox();
      if (!opened && attempts > 1) {
        // Refused handshakes are often an expired session: let the server decide.
        const r = await fetch('/', { redirect: 'manual' }).catch(() => null);
        if (r && r.type === 'opaqueredirect') return location.assign('/login');
      }
      const delay = Math.min(5000, 250 * 2 ** attempts) * (0.5 + Math.random());
      attempts += 1;
      retryTimer = setTimeout(connect, delay);
    };
  }
  $('#retry-now').addEventListener('click', () => { attempts = 0; connect(); });
  // Back online, or back to the tab: try now rather than at the next retry.
  const tryNow = () => { if (!isOpen() && !socket) { attempts = 0; connect(); } };
  addEventListener('online', tryNow);
  addEventListener('focus', tryNow);
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') tryNow(); });

  // A page kept in the back/forward cache keeps no socket: the person left.
  addEventListener('pagehide', () => {
    clearTimeout(retryTimer);
    if (socket) { const ws = socket; socket = null; ws.close(1000, 'Page left'); }
  });
  addEventListener('pageshow', (e) => {
    if (e.persisted) { attempts = 0; connect(); }
  });

  // ---- What the person does.

  // Editing and deleting one's own messages. The edit form shows the text as written
  // (`data-src` where formatting changed how it shows); the server's new article replaces
  // the message, form and all.
  function startEdit(article) {
    if (article.querySelector('.edit-form')) return article.querySelector('textarea').focus();
    // One message is edited at a time.
    for (const open of list().querySelectorAll('.edit-form')) stopEdit(open.closest('article'), false);
    const body = article.querySelector('.body');
    const form = document.createElement('form');
    form.className = 'edit-form';
    form.innerHTML = '<textarea rows="2" aria-label="Edit message"></textarea>'
      + '<button type="submit">Save</button> <button type="button" class="link" data-act="cancel">Cancel</button>';
    const box = form.querySelector('textarea');
    box.value = article.dataset.src ?? body.textContent;
    box.maxLength = MAX;
    body.hidden = true;
    const actions = article.querySelector('.msg-actions');
    if (actions) actions.hidden = true;
    body.after(form);
    form.scrollIntoView({ block: 'nearest' });
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); stopEdit(article); }
      else if (e.key === 'Enter' && !e.shiftKey && !touch) { e.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const text = box.value.trim();
      if (!text) return showError('A message cannot be empty: to remove it, use Delete.');
      // Unchanged: nothing to send (the server would change nothing either).
      if (text === (article.dataset.src ?? body.textContent)) return stopEdit(article);
      if (!send('Edit message', { messageId: article.id.slice(4), message: text })) showError(OFFLINE);
    });
  }
  // Replying: the composer says to what, and the post carries its id.
  let replying = null;
  function startReply(article) {
    const body = article.querySelector('.body');
    const text = (article.dataset.src ?? body?.textContent ?? '').trim();
    replying = { id: article.id.slice(4), room: activeRoom() };
    const bar = $('#reply-bar');
    bar.innerHTML = '<span>Replying to <bdi class="author"></bdi>: <span class="snippet" dir="auto"></span></span>'
      + '<button type="button" class="link" aria-label="Cancel the reply">✕</button>';
    bar.querySelector('.author').textContent = article.querySelector('.author')?.textContent || '';
    bar.querySelector('.snippet').textContent = [...text].slice(0, 120).join('');
    bar.querySelector('button').addEventListener('click', () => stopReply());
    bar.hidden = false;
    composer.focus();
  }
  function stopReply(focus = true) {
    replying = null;
    const bar = $('#reply-bar');
    bar.hidden = true;
    bar.innerHTML = '';
    if (focus) composer.focus();
  }
  composer.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && replying) { e.preventDefault(); stopReply(); }
  });
  // A quote leads to what it quotes, loading older history until it is there (a few
  // pages at most).
  let seeking = null;
  // A message to show once the room being entered is (a search result's).
  let pendingJump = null;
  function jumpTo(id) {
    const el = document.getElementById(`msg-${id}`);
    if (el) {
      seeking = null;
      el.scrollIntoView({ block: 'center' });
      el.classList.add('sought');
      setTimeout(() => el.classList.remove('sought'), 2000);
      return;
    }
    const older = $('button#load-older');
    if (!older || (seeking && seeking.id === id && seeking.pages >= 20)) {
      seeking = null;
      return showError('That message is no longer in this room’s history.');
    }
    seeking = { id, pages: (seeking?.id === id ? seeking.pages : 0) + 1 };
    loadingOlder = true;
    send('Load older', { beforeSeq: Number(older.dataset.beforeSeq) });
  }
  list().addEventListener('click', (e) => {
    const quote = e.target.closest('a.quote');
    if (!quote) return;
    e.preventDefault();
    jumpTo(quote.dataset.replyTo);
  });

  // Reacting: a few emoji at a click, or any one typed.
  const QUICK = ['👍', '❤️', '😂', '🎉', '😮', '😢'];
  function openPicker(article) {
    closePickers();
    const picker = document.createElement('form');
    picker.className = 'picker';
    picker.setAttribute('role', 'group');
    picker.setAttribute('aria-label', 'Reactions');
    picker.innerHTML = QUICK.map((e) => `<button type="button" class="link" data-act="react" data-emoji="${e}">${e}</button>`).join('')
      + '<input name="emoji" size="3" maxlength="16" placeholder="🙂" aria-label="Another emoji">'
      + '<button type="submit" class="link">Add</button>';
    picker.addEventListener('submit', (e) => {
      e.preventDefault();
      const emoji = picker.emoji.value.trim();
      if (emoji) react(article, emoji);
    });
    picker.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); closePickers(); article.querySelector('[data-act="pick"]')?.focus(); }
    });
    article.querySelector('.msg-actions')?.after(picker);
    picker.scrollIntoView({ block: 'nearest' });
    picker.querySelector('button').focus();
  }
  function closePickers() {
    for (const open of list().querySelectorAll('.picker')) open.remove();
  }
  function react(article, emoji) {
    closePickers();
    if (!send('React', { messageId: article.id.slice(4), emoji })) showError(OFFLINE);
  }
  function stopEdit(article, focus = true) {
    article.querySelector('.edit-form')?.remove();
    const body = article.querySelector('.body');
    if (body) body.hidden = false;
    const actions = article.querySelector('.msg-actions');
    if (actions) actions.hidden = false;
    if (focus) article.querySelector('[data-act="edit"]')?.focus();
  }
  // An error the page itself finds, where the server's errors go (`text` is the page's own).
  function showError(text) {
    $('#errors').innerHTML = `<p class="error" role="alert">${text}</p>`;
  }
  const OFFLINE = 'Not connected: try again once the connection is back.';
  list().addEventListener('click', (e) => {
    const button = e.target.closest('button[data-act]');
    const article = button?.closest('article.message');
    if (!article) return;
    const actions = article.querySelector('.msg-actions');
    switch (button.dataset.act) {
      case 'reply': return startReply(article);
      case 'pick': return article.querySelector('.picker') ? closePickers() : openPicker(article);
      case 'react': return react(article, button.dataset.emoji);
      case 'edit': return startEdit(article);
      case 'cancel': return stopEdit(article);
      // Asked where it was clicked, not in a dialog that stops the page.
      case 'delete':
        actions.innerHTML = '<span>Delete for everyone?</span>'
          + '<button type="button" class="link danger" data-act="delete-yes">Delete</button>'
          + '<button type="button" class="link" data-act="keep">Keep</button>';
        return actions.querySelector('[data-act="keep"]').focus();
      case 'keep':
        actions.remove();
        arrange();
        return article.querySelector('[data-act="delete"]')?.focus();
      case 'delete-yes':
        if (!send('Delete message', { messageId: article.id.slice(4) })) showError(OFFLINE);
    }
  });

  // The sidebar's forms (new group, message someone) keep what was typed until it worked,
  // and show a refusal beside themselves.
  let pendingForm = null;
  function formFeedback(errors) {
    const error = errors.querySelector('p.error');
    if (!pendingForm?.isConnected || !error) return;
    const slot = pendingForm.nextElementSibling?.classList.contains('form-error')
      ? pendingForm.nextElementSibling
      : pendingForm.insertAdjacentElement('afterend', Object.assign(document.createElement('p'), { className: 'form-error error', role: 'alert' }));
    slot.textContent = error.textContent;
    errors.innerHTML = '';
    pendingForm = null;
  }

  document.addEventListener('click', (e) => {
    const link = e.target.closest('a[data-group-name]');
    if (link) {
      e.preventDefault();
      const browse = $('#browse-dialog');
      if (browse.open) browse.close();
      // A search result: its message is shown once its room is.
      if (link.dataset.message) {
        pendingJump = link.dataset.message;
        $('#search-dialog').close();
      }
      openRoom(link.dataset.groupName, link.dataset.isGroup === 'true');
      return;
    }
    // A link in a message to one of this site's rooms opens it here (a quote leads to a
    // message of the room shown: see jumpTo).
    const inner = e.target.closest('#messages-list a[href]:not(.quote)');
    if (inner) {
      const url = new URL(inner.href, location.href);
      const room = url.origin === location.origin && roomIn(url.pathname);
      if (room) {
        e.preventDefault();
        openRoom(room.name, room.isGroup);
        return;
      }
    }
    // Buttons the server rendered with the action they stand for (leave, hide, block…).
    const action = e.target.closest('button[data-action]');
    if (action && (!action.dataset.confirm || confirm(action.dataset.confirm))) {
      send(action.dataset.action, JSON.parse(action.dataset.payload || '{}'));
    }
    const fix = e.target.closest('button[data-outbox]');
    if (fix) {
      const m = outbox.find((x) => x.clientId === fix.dataset.clientId);
      if (m && fix.dataset.outbox === 'retry') delete m.failed;
      if (m && fix.dataset.outbox === 'discard') outbox.splice(outbox.indexOf(m), 1);
      if (m && fix.dataset.outbox === 'edit') {
        // Back into the box, to change and send again.
        outbox.splice(outbox.indexOf(m), 1);
        composer.value = composer.value ? `${composer.value}\n${m.text}` : m.text;
        fitComposer();
        composer.focus();
      }
      saveOutbox();
      renderOutbox();
      flushOutbox();
    }
    // The room menu closes once an entry is chosen, or on a click elsewhere.
    const entry = e.target.closest('.room-menu .menu button');
    if (entry) entry.closest('details').open = false;
    for (const menu of document.querySelectorAll('.room-menu[open]')) if (!menu.contains(e.target)) menu.open = false;
    if (e.target.closest('#search-open, [data-open="search"]')) {
      if (!$('#search-query').value.trim()) { $('#search-results').innerHTML = ''; $('#search-more').innerHTML = ''; }
      $('#search-dialog').showModal();
      $('#search-query').select();
    }
    if (e.target.closest('#browse-open')) {
      $('#browse-query').value = '';
      send('Browse groups', { query: '' });
      $('#browse-dialog').showModal();
    }
    if (e.target.closest('#rooms-toggle')) {
      const open = document.body.classList.toggle('rooms-open');
      $('#rooms-toggle').setAttribute('aria-expanded', String(open));
    }
    const older = e.target.closest('button#load-older');
    if (older) send('Load older', { beforeSeq: Number(older.dataset.beforeSeq) });
  });

  // The composer grows with its text, up to about six lines (the newest messages stay in
  // view above it), and counts near the limit.
  function fitComposer() {
    const stick = nearBottom(list());
    // Its stylesheet caps the height; past it, the box scrolls.
    composer.style.height = 'auto';
    composer.style.height = `${composer.scrollHeight + 2}px`;
    if (stick) list().scrollTop = list().scrollHeight;
    const n = [...composer.value].length;
    const count = $('#message-count');
    count.textContent = n > MAX ? `Too long: ${n} of ${MAX} characters` : n > MAX * 0.9 ? `${n} / ${MAX}` : '';
    count.classList.toggle('error', n > MAX);
    $('#message-form button[type=submit]').disabled = n > MAX;
  }
  composer.addEventListener('input', () => {
    fitComposer();
    if (draftRoom) { drafts[draftRoom] = composer.value; store(DRAFTS, drafts); }
  });

  // Enters a room, or, offline, remembers it in the address and enters it on reconnecting.
  function openRoom(name, isGroup) {
    const browse = $('#browse-dialog');
    if (browse.open) browse.close();
    document.body.classList.remove('rooms-open');
    $('#rooms-toggle').setAttribute('aria-expanded', 'false');
    if (!send('Change group', { groupName: name, isGroup })) {
      history.pushState(null, '', isGroup ? `/r/${encodeURIComponent(name)}` : `/dm/${encodeURIComponent(name)}`);
      showConnection(`Offline: ${isGroup ? '#' : ''}${name} opens when the connection is back. Reconnecting…`);
    }
    if (!touch) composer.focus();
  }

  document.addEventListener('submit', (e) => {
    const form = e.target;
    // Real forms (log out) go to the server; dialog forms close their dialog.
    if (form.method === 'post' || form.method === 'dialog') return;
    e.preventDefault();
    const input = form.querySelector('input, textarea');
    const value = input.value;
    if (form.id === 'message-form') {
      const text = value.trim();
      if (!text || [...text].length > MAX) return;
      const room = activeRoom();
      if (!room) return;
      // Safe in the outbox (and sessionStorage) before the box is cleared.
      const m = { clientId: uuid(), room, title: activeTitle(), text };
      if (replying && replying.room === room) m.replyTo = replying.id;
      stopReply(false);
      outbox.push(m);
      saveOutbox();
      input.value = '';
      delete drafts[room];
      store(DRAFTS, drafts);
      fitComposer();
      const box = $('#outbox');
      box.append(pendingItem(m));
      box.scrollTop = box.scrollHeight;
      list().scrollTop = list().scrollHeight;
      flushOutbox();
      if (!touch) input.focus();
      return;
    }
    if (form.id === 'browse-form') return send('Browse groups', { query: value });
    if (form.id === 'search-form') {
      if (!send('Search', { query: value })) $('#search-results').innerHTML = `<li class="error">${OFFLINE}</li>`;
      return;
    }
    // Forms that answer for themselves (editing, the reaction picker) end here.
    if (form.id !== 'new-group' && form.id !== 'new-direct') return;
    form.nextElementSibling?.classList.contains('form-error') && form.nextElementSibling.remove();
    pendingForm = form;
    if (form.id === 'new-group') send('Create group', { groupName: value });
    if (form.id === 'new-direct') send('Change group', { groupName: value, isGroup: false });
  });

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
  $('#blocked').addEventListener('toggle', (e) => { if (e.target.open) send('Blocked people', {}); });

  let lastTyping = 0;
  document.addEventListener('keydown', (e) => {
    const menu = e.key === 'Escape' && e.target.closest?.('.room-menu[open]');
    if (menu) { menu.open = false; menu.querySelector('summary').focus(); return; }
    // Alt+↑ / Alt+↓ move to the room above or below in the sidebar.
    if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
      const rooms = [...document.querySelectorAll('#groups a[data-group-name], #directs a[data-group-name]')];
      const at = rooms.findIndex((a) => a.getAttribute('aria-current'));
      const next = rooms[at + (e.key === 'ArrowUp' ? -1 : 1)];
      if (next) { e.preventDefault(); next.click(); }
      return;
    }
    if (e.target.id !== 'message-text') return;
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !touch) {
      e.preventDefault();
      e.target.form.requestSubmit();
    } else if (Date.now() - lastTyping > 2000 && e.key.length === 1) {
      lastTyping = Date.now();
      send('Typing', {});
    }
  });
  composer.placeholder = touch ? 'Write a message…' : 'Write a message… (Enter sends, Shift+Enter: new line)';

  renderOutbox();
  connect();
})();
