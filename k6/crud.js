// The whole user life cycle per iteration, as the original service's load test did:
// create, increment, count (checked against the increments), delete, and a count that
// must now answer 404.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 k6/crud.js
//
// VUS (10), DURATION (30s), INCREMENTS (3 per user), SLEEP (0 s between iterations).
// ORIGINAL=true runs the original's staged ramp instead (about 25 minutes: 100, 300, 600
// and 800 VUs, then down) with its one-second pause per iteration.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import {
  API, TREND_STATS, checkStatus, envBool, envDuration, envFloat, envInt, jsonParams,
  thresholds, params, requireHealthy, runTag, summaryOutputs,
} from './lib.js';

const ORIGINAL = envBool('ORIGINAL', false);
const VUS = envInt('VUS', 10, 1, 100000);
const DURATION = envDuration('DURATION', '30s');
const INCREMENTS = envInt('INCREMENTS', 3, 1, 1000);
const SLEEP = envFloat('SLEEP', ORIGINAL ? 1 : 0, 0, 60);

const ORIGINAL_STAGES = [
  { duration: '5m', target: 100 },
  { duration: '5m', target: 300 },
  { duration: '5m', target: 600 },
  { duration: '5m', target: 800 },
  { duration: '3m', target: 200 },
  { duration: '2m', target: 0 },
];

const acked = new Counter('increments_acked');
const lifecycles = new Counter('lifecycles_completed');
// The count after delete must be a 404: not a failed request.
const expect404 = http.expectedStatuses(404);

export const options = {
  scenarios: {
    crud: ORIGINAL
      ? { executor: 'ramping-vus', startVUs: 0, stages: ORIGINAL_STAGES, gracefulRampDown: '10s' }
      : { executor: 'constant-vus', vus: VUS, duration: DURATION },
  },
  thresholds: thresholds(
    'crud', ['create', 'increment', 'count', 'delete', 'count_deleted'], 100, 250, 0.001,
  ),
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  requireHealthy();
  return { tag: `${runTag()}-crud` };
}

export default function (data) {
  const username = `${data.tag}-${__VU}-${__ITER}`;
  const created = http.post(`${API}/users`, JSON.stringify({ username }), jsonParams('create'));
  if (!checkStatus(created, 'create', 201)) return;
  const id = created.json('data.id');
  let value = 0;
  for (let i = 0; i < INCREMENTS; i++) {
    const res = http.put(`${API}/users/${id}/increment`, null, params('increment'));
    if (checkStatus(res, 'increment', 200)) {
      acked.add(1);
      value = res.json('data.counter');
    }
  }
  const count = http.get(`${API}/users/${id}/count`, params('count'));
  if (checkStatus(count, 'count', 200)) {
    check(count, {
      'count equals the increments': (r) => r.json('data.counter') === INCREMENTS,
      'the last increment answered the same value': () => value === INCREMENTS,
    });
  }
  const deleted = http.del(`${API}/users/${id}`, null, params('delete'));
  if (checkStatus(deleted, 'delete', 200)) {
    const gone = http.get(
      `${API}/users/${id}/count`,
      Object.assign(params('count_deleted'), { responseCallback: expect404 }),
    );
    if (checkStatus(gone, 'count_deleted', 404)) lifecycles.add(1);
  }
  if (SLEEP > 0) sleep(SLEEP);
}

export function handleSummary(data) {
  return summaryOutputs('crud', data);
}
