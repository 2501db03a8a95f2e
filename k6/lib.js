// Shared helpers of the UserCounter k6 scenarios: configuration from the environment,
// request parameters, user set-up and clean-up, and the end-of-test summary.
import http from 'k6/http';
import { check, fail } from 'k6';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const API = `${BASE_URL}/api/v1`;

// Integer from the environment, with a default and bounds, failing loudly on nonsense.
export function envInt(name, dflt, min = 0, max = Number.MAX_SAFE_INTEGER) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

export function envFloat(name, dflt, min = 0, max = Number.MAX_VALUE) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new Error(`${name} must be a number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return value;
}

export function envBool(name, dflt) {
  const raw = (__ENV[name] || '').toLowerCase();
  if (raw === '') return dflt;
  if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
  if (['0', 'false', 'no', 'off'].includes(raw)) return false;
  throw new Error(`${name} must be true or false, got ${JSON.stringify(__ENV[name])}`);
}

// A k6 duration string such as 30s, 2m or 1m30s.
export function envDuration(name, dflt) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^(\d+(ms|s|m|h))+$/.test(raw)) {
    throw new Error(`${name} must be a duration such as 30s, 2m or 1m30s, got ${JSON.stringify(raw)}`);
  }
  return raw;
}

// Behind an ingress without DNS, send the ingress host name while connecting to its address.
const HOST_HEADER = __ENV.HOST_HEADER || '';
// A deployment with AUTH_TOKEN_FILE wants a bearer token on create, increment and delete.
const AUTH = __ENV.AUTH_TOKEN ? `Bearer ${__ENV.AUTH_TOKEN}` : '';
const TIMEOUT = envDuration('REQUEST_TIMEOUT', '10s');
const JSON_HEADERS = { 'Content-Type': 'application/json' };

// Request parameters: `op` names the operation in metrics and thresholds.
export function params(op, extra = {}) {
  const headers = Object.assign({}, extra.headers || {});
  if (HOST_HEADER) headers.Host = HOST_HEADER;
  if (AUTH) headers.Authorization = AUTH;
  return { headers, tags: Object.assign({ op }, extra.tags || {}), timeout: TIMEOUT };
}

export function jsonParams(op) {
  return params(op, { headers: JSON_HEADERS });
}

// Thresholds of a scenario and of each of its operations: error rate, p95 and p99
// latency in ms. P95_MS, P99_MS and MAX_ERROR_RATE override the defaults given here.
export function thresholds(scenario, ops, p95, p99, errorRate) {
  const maxErrors = envFloat('MAX_ERROR_RATE', errorRate, 0, 1);
  const p95ms = envFloat('P95_MS', p95, 0);
  const p99ms = envFloat('P99_MS', p99, 0);
  const t = { checks: [`rate>=${1 - maxErrors}`] };
  for (const tag of [`scenario:${scenario}`, ...ops.map((op) => `op:${op}`)]) {
    t[`http_req_failed{${tag}}`] = [`rate<=${maxErrors}`];
    t[`http_req_duration{${tag}}`] = [`p(95)<${p95ms}`, `p(99)<${p99ms}`];
  }
  return t;
}

export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max', 'count'];

// A name unique to this run, so runs against one deployment never collide on usernames.
export function runTag() {
  const prefix = (__ENV.USER_PREFIX || 'k6').replace(/[^A-Za-z0-9_.-]/g, '').slice(0, 40);
  return `${prefix}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
}

// Create `n` users in batches (setup() is one VU: batches keep it short). Returns ids.
export function createUsers(n, tag, batch = 50) {
  const ids = [];
  for (let start = 0; start < n; start += batch) {
    const requests = [];
    for (let i = start; i < Math.min(n, start + batch); i++) {
      const body = JSON.stringify({ username: `${tag}-${i}` });
      requests.push(['POST', `${API}/users`, body, jsonParams('setup')]);
    }
    for (const res of http.batch(requests)) {
      if (res.status !== 201) {
        fail(`setup: creating a user answered ${res.status}: ${String(res.body).slice(0, 200)}`);
      }
      ids.push(res.json('data.id'));
    }
  }
  return ids;
}

// Delete the users a run created, unless CLEANUP=false (the bench keeps them to check MySQL).
export function deleteUsers(ids, batch = 50) {
  if (!envBool('CLEANUP', true)) return;
  for (let start = 0; start < ids.length; start += batch) {
    const requests = ids
      .slice(start, start + batch)
      .map((id) => ['DELETE', `${API}/users/${id}`, null, params('teardown')]);
    http.batch(requests);
  }
}

// Fail fast with a clear message when nothing answers at BASE_URL.
export function requireHealthy() {
  const res = http.get(`${BASE_URL}/healthz`, params('setup'));
  if (res.status !== 200) {
    fail(`${BASE_URL}/healthz answered ${res.status || res.error}; is BASE_URL right?`);
  }
}

export function pick(ids) {
  return ids[Math.floor(Math.random() * ids.length)];
}

// A check on a JSON answer: the status, and for errors the contract's JSON error shape.
export function checkStatus(res, op, expected) {
  return check(res, { [`${op} answers ${expected}`]: (r) => r.status === expected }, { op });
}

// What went wrong with a request, as one short string: the `error` code of a JSON error
// answer; `no answer: <k6's reason>` when none came (connection refused, timeout);
// `HTTP <status>` for an answer without the JSON error shape.
export function errorCode(res) {
  if (!res.status) return `no answer: ${res.error || `k6 error ${res.error_code}`}`;
  let code;
  try {
    code = res.json('error');
  } catch (e) {
    code = undefined;
  }
  return typeof code === 'string' && code ? code : `HTTP ${res.status}`;
}

function fmt(ms) {
  if (ms === undefined) return '-';
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)}s` : `${ms.toFixed(2)}ms`;
}

// A short text summary: what k6 prints by default is replaced by handleSummary, and the
// jslib textSummary would need a download.
export function textSummary(name, data) {
  const m = data.metrics;
  const lines = [`\n${name}: ${(data.state.testRunDurationMs / 1000).toFixed(1)} s`];
  const reqs = m.http_reqs ? m.http_reqs.values : { count: 0, rate: 0 };
  lines.push(`  requests      ${reqs.count} (${reqs.rate.toFixed(1)}/s)`);
  const failed = m.http_req_failed ? m.http_req_failed.values : null;
  if (failed) lines.push(`  failed        ${(failed.rate * 100).toFixed(3)}% (${failed.passes})`);
  for (const key of Object.keys(m).sort()) {
    const metric = m[key];
    if (key.startsWith('http_req_duration{') && key !== 'http_req_duration{expected_response:true}') {
      const v = metric.values;
      if (!v.count) continue;
      lines.push(
        `  ${key.slice(18, -1).padEnd(28)} n ${String(v.count).padStart(7)}  p50 ${fmt(v.med)}  p95 ${fmt(v['p(95)'])}  ` +
          `p99 ${fmt(v['p(99)'])}  max ${fmt(v.max)}`,
      );
    } else if (metric.type === 'counter' && !key.startsWith('http_') && !key.startsWith('data_')
      && key !== 'iterations') {
      lines.push(`  ${key.padEnd(28)} ${metric.values.count}`);
    }
  }
  if (m.checks) lines.push(`  checks        ${(m.checks.values.rate * 100).toFixed(3)}% passed`);
  const crossed = [];
  for (const [key, metric] of Object.entries(m)) {
    for (const [expr, t] of Object.entries(metric.thresholds || {})) {
      if (!t.ok) crossed.push(`${key}: ${expr}`);
    }
  }
  lines.push(crossed.length ? `  THRESHOLDS CROSSED:\n    ${crossed.join('\n    ')}` : '  thresholds    all passed');
  return lines.join('\n') + '\n';
}

// stdout text, plus the whole summary as JSON in SUMMARY_JSON (default summary-<name>.json).
export function summaryOutputs(name, data) {
  const path = __ENV.SUMMARY_JSON || `summary-${name}.json`;
  return { stdout: textSummary(name, data), [path]: JSON.stringify(data, null, 1) };
}
