// k6: one person searching a large history, one query after another, timing each from the
// Search sent to its results back (see loadtest/search.sh, which seeds the history).
//
// Environment:
//   BASE_URL   the node (default http://127.0.0.1:8000)
//   SEARCHES   how many searches (default 300)
//   QUERIES    comma-separated queries, taken in turn (default: words and phrases of the
//              seeded vocabulary, and some it never holds)
//   P99_MS     threshold for the search time's p99 (default 50)
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { WebSocket } from 'k6/experimental/websockets';

const BASE = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const WS_URL = BASE.replace(/^http/, 'ws') + '/ws/chat/';
const SEARCHES = Number(__ENV.SEARCHES || 300);
const P99_MS = Number(__ENV.P99_MS || 50);
const QUERIES = (__ENV.QUERIES
  || 'alpha,quartz,harbor lantern,meadow,zigzag ember,violet,no such words,xylophone kettle,'
   + 'emb,lantern meadow violet,明天开会,nowhere at all,copper,tundra wh,Harbor')
  .split(',');

export const options = {
  scenarios: {
    search: { executor: 'per-vu-iterations', vus: 1, iterations: 1, maxDuration: '10m' },
  },
  thresholds: {
    search_ms: [`p(99)<${P99_MS}`],
    search_errors: ['count==0'],
  },
  summaryTrendStats: ['min', 'med', 'p(90)', 'p(99)', 'max'],
};

const searchMs = new Trend('search_ms', true);
const errors = new Counter('search_errors');
const found = new Counter('search_results_found');

export default function () {
  const name = `search${Date.now() % 1e8}`;
  const res = http.post(`${BASE}/signup`, { username: name, password: 'search-password-1' }, {
    headers: { Origin: BASE },
    redirects: 0,
  });
  const cookie = res.cookies.wirechat_session && res.cookies.wirechat_session[0];
  if (!check(res, { 'signed up': (r) => r.status === 303 && cookie !== undefined })) {
    fail(`could not sign up: ${res.status}`);
  }
  const ws = new WebSocket(WS_URL, null, {
    headers: { Origin: BASE, Cookie: `wirechat_session=${cookie.value}` },
  });
  let n = 0;
  let started = 0;
  const next = () => {
    if (n === SEARCHES) {
      ws.close();
      return;
    }
    const query = QUERIES[n % QUERIES.length];
    n += 1;
    started = Date.now();
    ws.send(JSON.stringify({ action: 'Search', data: { query } }));
  };
  ws.onopen = () => next();
  ws.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.selector === '#search-results') {
      searchMs.add(Date.now() - started);
      found.add((frame.html.match(/class="found"/g) || []).length);
    } else if (frame.selector === '#search-more') {
      next();
    } else if (frame.selector === '#errors' && frame.html.includes('class="error"')) {
      errors.add(1);
      console.error(frame.html);
      next();
    }
  };
}
