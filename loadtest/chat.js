// k6 load test for wirechat: each virtual user becomes a guest (or signs up), opens the chat
// socket, enters a room, posts at a steady rate with its send time in every message, moves to
// another room and back, and measures how long its own and others' messages take to arrive.
//
// Run (see loadtest/README.md):
//   k6 run -e BASE_URL=http://127.0.0.1:8000 loadtest/chat.js
//
// Environment:
//   BASE_URL      the node or the Caddy in front of a cluster (default http://127.0.0.1:8000)
//   STAGES        ramping stages "duration:target,…" (default "10s:20,30s:20,10s:0")
//   SESSION_S     seconds one VU keeps its socket before reconnecting as a new session (20)
//   RATE          messages per second per VU (default 2; the server allows 20 per user)
//   ROOMS         rooms the VUs spread over (default 4: k6-0 … k6-3)
//   SIGNUP        "1": sign up with a password instead of continuing as a guest
//   P99_MS        threshold for the delivery latency p99 (default 500)
//   CHECK_RATE    threshold for the share of passed checks (default 0.99; CI uses 1)
import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { WebSocket } from 'k6/experimental/websockets';

const BASE = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const WS_URL = BASE.replace(/^http/, 'ws') + '/ws/chat/';
const SESSION_MS = Number(__ENV.SESSION_S || 20) * 1000;
const RATE = Number(__ENV.RATE || 2);
const ROOMS = Number(__ENV.ROOMS || 4);
const SIGNUP = __ENV.SIGNUP === '1';
const P99_MS = Number(__ENV.P99_MS || 500);
const CHECK_RATE = Number(__ENV.CHECK_RATE || 0.99);
// A run's own messages are told apart from older history by this tag.
const RUN = __ENV.RUN_ID || String(Date.now() % 1e8);

function parseStages(spec) {
  return spec.split(',').map((part) => {
    const [duration, target] = part.trim().split(':');
    return { duration, target: Number(target) };
  });
}

export const options = {
  scenarios: {
    chat: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: parseStages(__ENV.STAGES || '10s:20,30s:20,10s:0'),
      gracefulRampDown: '5s',
      gracefulStop: '5s',
    },
  },
  thresholds: {
    checks: [`rate>=${CHECK_RATE}`],
    delivery_latency: [`p(99)<${P99_MS}`],
    ws_unexpected_closes: ['count==0'],
    server_error_frames: ['count==0'],
  },
};

const deliveryLatency = new Trend('delivery_latency', true);
const sent = new Counter('chat_messages_sent');
const received = new Counter('chat_messages_received');
const errorFrames = new Counter('server_error_frames');
const unexpectedCloses = new Counter('ws_unexpected_closes');

// The server's message fragments, as JSON-decoded HTML.
const SEQ_RE = /data-seq="(\d+)"/g;
const BODY_RE = /<p class="body"[^>]*>k6 (\S+) (\d+) (\d+) (\d+)<\/p>/g;
const ROOM_RE = /data-room-id="([^"]+)">(?:<bdi>)?([^<]*)</;

function session() {
  const origin = BASE;
  let res;
  if (SIGNUP) {
    const name = `k6${RUN}v${__VU}i${__ITER}`.slice(0, 32);
    res = http.post(`${BASE}/signup`, { username: name, password: 'k6-password-1' }, {
      headers: { Origin: origin },
      redirects: 0,
    });
  } else {
    res = http.post(`${BASE}/guest`, null, { headers: { Origin: origin }, redirects: 0 });
  }
  const cookie = res.cookies.wirechat_session && res.cookies.wirechat_session[0];
  if (!check(res, {
    'account: 303 See Other': (r) => r.status === 303,
    'account: session cookie set': () => cookie !== undefined,
  })) {
    // Pause so that a server which is down is not hammered by a tight loop of retries.
    sleep(1);
    fail(`could not create an account: ${res.status}`);
  }
  return cookie.value;
}

function send(ws, action, data) {
  ws.send(JSON.stringify({ action, data }));
}

export default function () {
  const cookie = session();
  const home = `k6-${__VU % ROOMS}`;
  const visit = 'python';
  const ws = new WebSocket(WS_URL, null, {
    headers: { Origin: BASE, Cookie: `wirechat_session=${cookie}` },
  });

  let room = null; // the title shown in #group-name
  let historyShown = false;
  let n = 0;
  let ownEchoes = 0;
  let closing = false;
  let poster = null;
  const seen = new Set();

  ws.onopen = () => {
    send(ws, 'Change group', { groupName: home, isGroup: true });
    poster = setInterval(() => {
      if (room !== `#${home}`) return;
      send(ws, 'New message', { message: `k6 ${RUN} ${__VU} ${n++} ${Date.now()}` });
      sent.add(1);
    }, 1000 / RATE);
    // Halfway through, visit another room and come back, as a person switching tabs does.
    setTimeout(() => send(ws, 'Change group', { groupName: visit, isGroup: true }), SESSION_MS / 2);
    setTimeout(() => send(ws, 'Change group', { groupName: home, isGroup: true }), SESSION_MS / 2 + 500);
    setTimeout(() => {
      closing = true;
      clearInterval(poster);
      check(null, {
        'socket: history shown': () => historyShown,
        'socket: own messages came back': () => n === 0 || ownEchoes > 0,
      });
      ws.close();
    }, SESSION_MS);
  };

  ws.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (_) {
      check(null, { 'frame: valid JSON': () => false });
      return;
    }
    if (frame.selector === '#group-name') {
      const m = ROOM_RE.exec(frame.html);
      room = m ? m[2] : null;
      return;
    }
    if (frame.selector === '#errors') {
      // A notice says what an action did (you joined a group); an error is a refusal.
      if (frame.html.includes('class="error"')) errorFrames.add(1);
      return;
    }
    if (frame.selector !== '#messages-list') return;
    if (frame.swap === 'innerHTML') {
      historyShown = true;
      return;
    }
    const now = Date.now();
    const seqs = [...frame.html.matchAll(SEQ_RE)].map((m) => m[1]);
    for (const seq of seqs) {
      const key = `${room}:${seq}`;
      check(null, { 'delivery: no duplicates': () => !seen.has(key) });
      seen.add(key);
    }
    for (const m of frame.html.matchAll(BODY_RE)) {
      if (m[1] !== RUN) continue;
      received.add(1);
      deliveryLatency.add(now - Number(m[4]));
      if (Number(m[2]) === __VU) ownEchoes += 1;
    }
  };

  ws.onclose = () => {
    clearInterval(poster);
    if (!closing) unexpectedCloses.add(1);
  };

  ws.onerror = (e) => {
    if (!closing) {
      check(null, { 'socket: no errors': () => false });
      console.error(`socket error: ${e.error}`);
    }
  };
}
