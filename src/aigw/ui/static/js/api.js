// The admin API client. The admin token lives in sessionStorage only (gone
// when the tab closes, never put in a URL) and is sent as a bearer token.
// Errors arrive as RFC 9457 problem+json and are thrown as ApiError.

const TOKEN_KEY = "aigw.adminToken";

export const session = {
  get token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    const body = problem && typeof problem === "object" ? problem : {};
    super(body.detail || body.title || `Request failed (${status})`);
    this.name = "ApiError";
    this.status = status;
    this.code = body.code || (status === 0 ? "network_error" : "error");
    this.title = body.title || "Request failed";
    this.detail = body.detail || body.title || "";
    this.errors = Array.isArray(body.errors) ? body.errors : [];
  }

  /** What to tell the operator in one sentence. */
  get summary() {
    if (this.detail && this.detail !== this.title) return `${this.title}: ${this.detail}`;
    return this.title;
  }
}

let unauthorizedHandler = () => {};

/** Called when the API answers 401: the token is wrong or was rotated. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

async function request(method, path, { body, query, ifMatch, signal, token } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json, application/problem+json" };
  const bearer = token ?? session.token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (ifMatch !== undefined && ifMatch !== null) headers["If-Match"] = `"${ifMatch}"`;

  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, {
      title: "The gateway could not be reached",
      detail: "Check that aigw is running and try again.",
    });
  }

  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { title: `HTTP ${response.status}`, detail: text.slice(0, 300) };
      }
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && token === undefined) unauthorizedHandler(error);
    throw error;
  }
  const etag = response.headers.get("ETag");
  const version = etag ? Number.parseInt(etag.replace(/^W\//, "").replaceAll('"', ""), 10) : null;
  return { data, version, status: response.status };
}

const get = async (path, opts) => (await request("GET", path, opts)).data;

export const api = {
  /** Check a candidate admin token without touching the stored one. */
  async verifyToken(token) {
    await request("GET", "/providers", { query: { limit: 1 }, token });
  },

  listKeys(query, signal) {
    return get("/apikeys", { query, signal });
  },
  async getKey(id, signal) {
    const { data, version } = await request("GET", `/apikeys/${encodeURIComponent(id)}`, { signal });
    return { ...data, version: version ?? data.version };
  },
  async createKey(body) {
    return (await request("POST", "/apikeys", { body })).data;
  },
  async updateKey(id, body, version) {
    return (await request("PATCH", `/apikeys/${encodeURIComponent(id)}`, { body, ifMatch: version }))
      .data;
  },
  async deleteKey(id) {
    await request("DELETE", `/apikeys/${encodeURIComponent(id)}`);
  },
  async rotateToken(id) {
    return (await request("POST", `/apikeys/${encodeURIComponent(id)}/token`)).data;
  },
  keyUsage(id, query, signal) {
    return get(`/apikeys/${encodeURIComponent(id)}/usage`, { query, signal });
  },

  listProviders(query, signal) {
    return get("/providers", { query, signal });
  },
  /** Every provider, following next_cursor (bounded: a console select, not an export). */
  async allProviders(signal) {
    const items = [];
    let cursor;
    for (let page = 0; page < 20; page += 1) {
      const data = await get("/providers", { query: { limit: 200, cursor }, signal });
      items.push(...data.items);
      cursor = data.next_cursor;
      if (!cursor) break;
    }
    return items;
  },
  async createProvider(body) {
    return (await request("POST", "/providers", { body })).data;
  },
  async updateProvider(id, body, version) {
    return (
      await request("PATCH", `/providers/${encodeURIComponent(id)}`, { body, ifMatch: version })
    ).data;
  },
  async deleteProvider(id) {
    await request("DELETE", `/providers/${encodeURIComponent(id)}`);
  },

  audit(query, signal) {
    return get("/audit", { query, signal });
  },
};
