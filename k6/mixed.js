// Mixed load the way existing clients drive the service: per iteration a VU creates a
// user, increments it once, reads its count, deletes it, and pauses (think time), while
// the number of VUs ramps up, holds and ramps down.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 k6/mixed.js
//
// VUS (600): the peak; RAMP_UP (60s) from 0 to VUS, HOLD (30s), RAMP_DOWN (10s) to 0;
// SLEEP (1 s of think time per iteration). Every failed request is also written to the
// console as one JSON line, {"mixed_error": {"op", "status", "code"}}, `code` being the
// `error` field of the JSON answer: k6 keeps no per-tag tallies of values it cannot know
// in advance, so the bench counts error codes from these lines (`--console-output`).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  API, TREND_STATS, checkStatus, envDuration, envFloat, envInt, errorCode, jsonParams,
  params, requireHealthy, runTag, summaryOutputs, thresholds,
} from './lib.js';

const VUS = envInt('VUS', 600, 1, 100000);
const RAMP_UP = envDuration('RAMP_UP', '60s');
const HOLD = envDuration('HOLD', '30s');
const RAMP_DOWN = envDuration('RAMP_DOWN', '10s');
const SLEEP = envFloat('SLEEP', 1, 0, 60);

const lifecycles = new Counter('lifecycles_completed');

export const options = {
  scenarios: {
    mixed: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: RAMP_UP, target: VUS },
        { duration: HOLD, target: VUS },
        { duration: RAMP_DOWN, target: 0 },
      ],
      gracefulRampDown: '10s',
    },
  },
  thresholds: thresholds('mixed', ['create', 'increment', 'count', 'delete'], 100, 250, 0.001),
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  requireHealthy();
  return { tag: `${runTag()}-mixed` };
}

// The status check, and for a failure its line on the console.
function answered(res, op, expected) {
  if (checkStatus(res, op, expected)) return true;
  console.log(JSON.stringify({ mixed_error: { op, status: res.status, code: errorCode(res) } }));
  return false;
}

export default function (data) {
  const username = `${data.tag}-${__VU}-${__ITER}`;
  const created = http.post(`${API}/users`, JSON.stringify({ username }), jsonParams('create'));
  if (answered(created, 'create', 201)) {
    const id = created.json('data.id');
    const inc = http.put(`${API}/users/${id}/increment`, null, params('increment'));
    const incremented = answered(inc, 'increment', 200);
    const count = http.get(`${API}/users/${id}/count`, params('count'));
    const counted = answered(count, 'count', 200);
    if (counted && incremented) {
      check(count, { 'count is 1 after one increment': (r) => r.json('data.counter') === 1 });
    }
    const deleted = http.del(`${API}/users/${id}`, null, params('delete'));
    if (answered(deleted, 'delete', 200) && incremented && counted) lifecycles.add(1);
  }
  if (SLEEP > 0) sleep(SLEEP);
}

export function handleSummary(data) {
  return summaryOutputs('mixed', data);
}
