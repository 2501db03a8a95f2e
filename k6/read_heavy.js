// Mostly counts, some increments: a read-mostly workload on a pool of users.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 k6/read_heavy.js
//
// VUS (64), DURATION (30s), USERS (1000), WRITE_PERCENT (10): share of increments.
// A tenth of the reads (USER_READ_PERCENT, 10) fetch the whole user (MySQL row + live
// counter); the rest read the counter only (Redis). Thresholds as in increment.js.
import http from 'k6/http';
import { Counter } from 'k6/metrics';
import {
  API, TREND_STATS, checkStatus, createUsers, deleteUsers, envDuration, envInt,
  thresholds, params, pick, requireHealthy, runTag, summaryOutputs,
} from './lib.js';

const VUS = envInt('VUS', 64, 1, 100000);
const DURATION = envDuration('DURATION', '30s');
const USERS = envInt('USERS', 1000, 1, 1000000);
const WRITE_PERCENT = envInt('WRITE_PERCENT', 10, 0, 100);
const USER_READ_PERCENT = envInt('USER_READ_PERCENT', 10, 0, 100);

const acked = new Counter('increments_acked');

export const options = {
  scenarios: { read_heavy: { executor: 'constant-vus', vus: VUS, duration: DURATION } },
  thresholds: thresholds('read_heavy', ['count', 'increment', 'get_user'], 50, 100, 0.001),
  summaryTrendStats: TREND_STATS,
  setupTimeout: '5m',
  teardownTimeout: '5m',
};

export function setup() {
  requireHealthy();
  return { ids: createUsers(USERS, `${runTag()}-read`) };
}

export default function (data) {
  const id = pick(data.ids);
  const dice = Math.random() * 100;
  if (dice < WRITE_PERCENT) {
    const res = http.put(`${API}/users/${id}/increment`, null, params('increment'));
    if (checkStatus(res, 'increment', 200)) acked.add(1);
  } else if (Math.random() * 100 < USER_READ_PERCENT) {
    checkStatus(http.get(`${API}/users/${id}`, params('get_user')), 'get_user', 200);
  } else {
    checkStatus(http.get(`${API}/users/${id}/count`, params('count')), 'count', 200);
  }
}

export function teardown(data) {
  deleteUsers(data.ids);
}

export function handleSummary(data) {
  return summaryOutputs('read_heavy', data);
}
