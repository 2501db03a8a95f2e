// A sudden ramp to many VUs and back: behaviour under overload. Every answer must be a
// 200 or a clean refusal (503 or 429 with the JSON error shape); a 500, a dropped
// connection or a request that hangs past REQUEST_TIMEOUT crosses the thresholds. After
// the spike, latency must come back to normal.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 k6/spike.js
//
// BASE_VUS (10), SPIKE_VUS (400), USERS (100), WRITE_PERCENT (50: increments, the rest
// counts), RECOVERED_P95_MS (100). Stage lengths: BEFORE (15s at BASE_VUS), RAMP (5s up
// and 5s down), HOLD (20s at SPIKE_VUS), AFTER (15s at BASE_VUS again).
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate } from 'k6/metrics';
import {
  API, TREND_STATS, createUsers, deleteUsers, envDuration, envFloat, envInt, params, pick,
  requireHealthy, runTag, summaryOutputs,
} from './lib.js';

const BASE_VUS = envInt('BASE_VUS', 10, 1, 100000);
const SPIKE_VUS = envInt('SPIKE_VUS', 400, 1, 100000);
const BEFORE = envDuration('BEFORE', '15s');
const RAMP = envDuration('RAMP', '5s');
const HOLD = envDuration('HOLD', '20s');
const AFTER = envDuration('AFTER', '15s');
const USERS = envInt('USERS', 100, 1, 1000000);
const WRITE_PERCENT = envInt('WRITE_PERCENT', 50, 0, 100);
const RECOVERED_P95_MS = envFloat('RECOVERED_P95_MS', 100, 0);

// [stage, phase tag]: the phase of a request is the stage it started in.
const STAGES = [
  [{ duration: BEFORE, target: BASE_VUS }, 'before'],
  [{ duration: RAMP, target: SPIKE_VUS }, 'spike'],
  [{ duration: HOLD, target: SPIKE_VUS }, 'spike'],
  [{ duration: RAMP, target: BASE_VUS }, 'spike'],
  [{ duration: AFTER, target: BASE_VUS }, 'after'],
];

function seconds(duration) {
  let total = 0;
  for (const [, n, unit] of duration.matchAll(/(\d+)(ms|s|m|h)/g)) {
    total += Number(n) * { ms: 0.001, s: 1, m: 60, h: 3600 }[unit];
  }
  return total;
}

const PHASE_ENDS = [];
{
  let t = 0;
  for (const [stage, phase] of STAGES) {
    t += seconds(stage.duration);
    PHASE_ENDS.push([t, phase]);
  }
}

function phaseNow() {
  const elapsed = (Date.now() - exec.scenario.startTime) / 1000;
  for (const [end, phase] of PHASE_ENDS) if (elapsed < end) return phase;
  return 'after';
}

// 503 and 429 are the clean ways to refuse work: not failures of the service.
const clean = http.expectedStatuses({ min: 200, max: 299 }, 429, 503);
const acked = new Counter('increments_acked');
const shed = new Rate('shed_requests');
const unclean = new Counter('unclean_responses');

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: BASE_VUS,
      stages: STAGES.map(([stage]) => stage),
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    // No 500s, no dropped connections, no hangs: every answer is 2xx, 503 or 429.
    unclean_responses: ['count==0'],
    'http_req_failed{op:spike}': ['rate==0'],
    // Refusals must carry the JSON error shape and Retry-After.
    checks: ['rate==1'],
    // Back to normal once the spike is over.
    'http_req_duration{phase:after}': [`p(95)<${RECOVERED_P95_MS}`],
    'http_req_duration{phase:spike}': ['max<10000'],
    'http_req_duration{phase:before}': ['p(95)<1000'],
    shed_requests: ['rate<1'],
  },
  summaryTrendStats: TREND_STATS,
  setupTimeout: '5m',
  teardownTimeout: '5m',
};

export function setup() {
  requireHealthy();
  return { ids: createUsers(USERS, `${runTag()}-spike`) };
}

export default function (data) {
  const id = pick(data.ids);
  const write = Math.random() * 100 < WRITE_PERCENT;
  const p = Object.assign(params('spike', { tags: { phase: phaseNow() } }), {
    responseCallback: clean,
  });
  const res = write
    ? http.put(`${API}/users/${id}/increment`, null, p)
    : http.get(`${API}/users/${id}/count`, p);
  const refused = res.status === 503 || res.status === 429;
  shed.add(refused);
  if (res.status === 200) {
    if (check(res, { 'a success carries the counter': (r) => r.json('data.counter') > 0 || !write })
      && write) {
      acked.add(1);
    }
    return;
  }
  if (!refused) {
    unclean.add(1, { status: String(res.status) });
    return;
  }
  check(res, {
    'a refusal is a JSON error': (r) => typeof r.json('error') === 'string',
    'a refusal says when to retry': (r) => Boolean(r.headers['Retry-After']),
  });
}

export function teardown(data) {
  deleteUsers(data.ids);
}

export function handleSummary(data) {
  return summaryOutputs('spike', data);
}
