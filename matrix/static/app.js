/* Transport Matrix demo page: stream one answer per lane through the relay over a chosen
   client transport, and show the answer, every frame on the wire, and the figures.

   Three client transports, one interface (start, stop, drop, resume, close):
   - FetchSSE: POST /v1/chat/sse and read the streamed body, so every SSE line is visible,
     `: ping` comments included.
   - EventSourceSSE: the browser's EventSource cannot POST a body, so the page starts the
     stream with a fetch POST, follows it on GET /v1/streams/{id}/events, and lets the
     POST go once EventSource holds the stream.
   - WebSocketClient: one socket per lane; `chat`, `cancel` and `resume` messages.
   Every stream id is chosen here, so Stop and resume work before the first event.

   With "continue the conversation" on, each lane sends `conversation_id` and only the new
   message; the relay keeps the history. After each stream ends the lane reads back what
   the relay saved (GET /v1/conversations/{id}) and shows the turns. */
'use strict';

const HERE = document.baseURI;
const API = {
  chat: new URL('v1/chat/sse', HERE).href,
  ws: new URL('v1/chat/ws', HERE).href.replace(/^http/, 'ws'),
  upstreams: new URL('v1/upstreams', HERE).href,
  events: (id, after) => new URL(`v1/streams/${encodeURIComponent(id)}/events`
                                 + (after === undefined ? '' : `?last_event_id=${after}`), HERE).href,
  cancel: (id) => new URL(`v1/streams/${encodeURIComponent(id)}/cancel`, HERE).href,
  conversations: new URL('v1/conversations?limit=50', HERE).href,
  conversation: (id) => new URL(`v1/conversations/${encodeURIComponent(id)}`, HERE).href,
};
const DOWNSTREAM_TRANSPORT = {fetch: 'sse', eventsource: 'sse', ws: 'ws'};
const DOWNSTREAM_LABEL = {fetch: 'SSE · fetch', eventsource: 'SSE · EventSource', ws: 'WebSocket'};
const STOP_WAIT_MS = 3000;   // after a cancel request, how long to wait for done/cancelled
const LOG_LIMIT = 4000;      // wire log entries kept per lane
const RAW_PREVIEW = 600;     // characters of a long frame shown before "more"
const encoder = new TextEncoder();

const $ = (selector, root = document) => root.querySelector(selector);
const byteLength = (text) => encoder.encode(text).byteLength;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const ms = (value) => `${value < 100 ? value.toFixed(1) : Math.round(value)} ms`;

function newStreamId() {
  const random = Math.random().toString(36).slice(2, 8);
  return `demo-${Date.now().toString(36)}-${random}`;
}

/* ---------------------------------------------------------------- SSE parsing */

/** Incremental SSE line parser (WHATWG rules): blank line dispatches, `:` is a comment. */
class SSEParser {
  constructor(onEvent, onComment) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buffer = '';
    this.lines = [];
  }

  feed(text) {
    this.buffer += text;
    const parts = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = parts.pop();  // an unfinished line waits for the next read
    for (const line of parts) this.line(line);
  }

  line(line) {
    if (line === '') {
      if (this.lines.length) this.dispatch();
      return;
    }
    if (line.startsWith(':')) {
      this.onComment(line);
      return;
    }
    this.lines.push(line);
  }

  dispatch() {
    const lines = this.lines;
    this.lines = [];
    const fields = {event: 'message', data: [], id: null};
    for (const line of lines) {
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (name === 'data') fields.data.push(value);
      else if (name === 'event') fields.event = value;
      else if (name === 'id') fields.id = value;
    }
    const raw = lines.join('\n');
    this.onEvent({...fields, data: fields.data.join('\n'), raw, bytes: byteLength(raw) + 2});
  }
}

/* ---------------------------------------------------------------- client transports */

/** What every client transport shares. `epoch` rises on every drop or close, and each
    connection remembers the epoch it began in, so the late callbacks of a cut connection
    deliver nothing: the page resumes after the last seq it actually processed. */
class Transport {
  constructor(lane) {
    this.lane = lane;
    this.epoch = 0;
  }

  current(epoch) {
    return epoch === this.epoch;
  }

  /** Stop: ask the relay to cancel; it closes the provider connection and sends done/cancelled. */
  stop() {
    return this.lane.postCancel();
  }

  /** Drop: cut this page's connection as a network failure would; the relay waits for a resume. */
  drop() {
    this.epoch++;
    this.cut();
    this.lane.logNote(this.cutNote);
  }

  close() {
    this.epoch++;
    this.cut();
  }

  postChat(body, signal, note = '') {
    const text = JSON.stringify(body);
    this.lane.logUp('POST /v1/chat/sse', note ? `${text}\n${note}` : text);
    return fetch(API.chat, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: text, signal});
  }

  /** The response of `request` if it is a 200, else null once the lane knows why. */
  async accepted(request, epoch) {
    let response;
    try {
      response = await request;
    } catch (error) {
      if (this.current(epoch)) this.lane.connectionLost(`fetch failed: ${error.message}`);
      return null;
    }
    if (!this.current(epoch)) return null;
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      this.lane.refused(response.status, body.error || {});
      return null;
    }
    return response;
  }

  decode(data) {
    try {
      return JSON.parse(data);
    } catch {
      this.lane.logNote(`not a JSON event: ${data}`, 'bad');
      return null;
    }
  }
}

/** SSE over a fetch POST: the streamed response body is read and parsed here, line by line. */
class FetchSSE extends Transport {
  cutNote = 'fetch aborted: the TCP connection to the relay is closed';

  start(body) {
    const epoch = ++this.epoch;
    this.controller = new AbortController();
    return this.consume(this.postChat(body, this.controller.signal), epoch);
  }

  resume(after) {
    const epoch = ++this.epoch;
    this.controller = new AbortController();
    this.lane.logUp(`GET /v1/streams/${this.lane.streamId}/events`, `Last-Event-ID: ${after}`);
    const request = fetch(API.events(this.lane.streamId), {headers: {'Last-Event-ID': String(after)},
                                                         signal: this.controller.signal});
    return this.consume(request, epoch);
  }

  async consume(request, epoch) {
    const lane = this.lane;
    const response = await this.accepted(request, epoch);
    if (!response) return;
    lane.logNote(`HTTP ${response.status} · ${response.headers.get('content-type')} · `
                 + `X-Accel-Buffering: ${response.headers.get('x-accel-buffering') || '—'}`);
    const parser = new SSEParser(
      (sse) => {
        if (!this.current(epoch)) return;
        const event = this.decode(sse.data);
        if (event) lane.receive(event, {raw: sse.raw, bytes: sse.bytes});
      },
      (comment) => this.current(epoch) && lane.heartbeat(comment),
    );
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done || !this.current(epoch)) break;
        lane.addBytes(value.byteLength);
        parser.feed(decoder.decode(value, {stream: true}));
      }
    } catch (error) {
      if (this.current(epoch)) lane.connectionLost(`body read failed: ${error.message}`);
      return;
    }
    if (this.current(epoch)) lane.connectionEnded('the response body ended');
  }

  cut() {
    this.controller?.abort();
  }
}

/** SSE with the browser's own EventSource, on the resume endpoint. */
class EventSourceSSE extends Transport {
  cutNote = 'EventSource closed by the page (source.close())';

  async start(body) {
    const epoch = ++this.epoch;
    this.starter = new AbortController();  // the POST that starts the stream, let go once EventSource follows it
    const request = this.postChat(body, this.starter.signal,
                                  '(EventSource cannot POST a body: this request only starts the stream)');
    // Once it is accepted, the stream exists on the relay: follow it from the start.
    if (await this.accepted(request, epoch)) this.follow(-1, epoch);
  }

  resume(after) {
    this.follow(after, ++this.epoch);
  }

  follow(after, epoch) {
    const lane = this.lane;
    const url = new URL(API.events(lane.streamId, after));
    lane.logUp(`new EventSource('${url.pathname}${url.search}')`,
               after < 0 ? 'every event from seq 0' : `every event after seq ${after}`);
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => this.current(epoch) && lane.logNote('EventSource open (readyState OPEN)');
    const deliver = (message) => {
      if (!this.current(epoch)) return;
      if (this.starter) {
        this.starter.abort();  // EventSource holds the stream now: the starting POST may go
        this.starter = null;
        lane.logNote('EventSource follows the stream: the starting POST is closed');
      }
      const event = this.decode(message.data);
      if (!event) return;
      // EventSource hides the raw lines; this is what it exposes, written back as lines.
      const raw = `id: ${message.lastEventId}\nevent: ${message.type}\ndata: ${message.data}`;
      const bytes = byteLength(raw) + 2;
      lane.addBytes(bytes);
      lane.receive(event, {raw, bytes});
    };
    for (const type of ['start', 'delta', 'done', 'trace']) source.addEventListener(type, deliver);
    // `event: error` from the relay and EventSource's own connection error share one name:
    // only the relay's is a MessageEvent with data.
    source.addEventListener('error', (event) => {
      if (!this.current(epoch)) return;
      if (event instanceof MessageEvent && event.data !== undefined) {
        deliver(event);
      } else if (source.readyState === EventSource.CONNECTING) {
        lane.logNote(`EventSource lost the connection and reconnects by itself, sending Last-Event-ID: ${lane.lastSeq}`);
      } else if (source.readyState === EventSource.CLOSED) {
        lane.connectionLost('EventSource gave up (the relay refused the resume, or the page is offline)');
      }
    });
  }

  cut() {
    this.source?.close();
    this.starter?.abort();
    this.starter = null;
  }
}

/** WebSocket: JSON text frames both ways; one socket per lane (the relay allows many streams on one). */
class WebSocketClient extends Transport {
  cutNote = 'WebSocket closed by the page';

  start(body) {
    this.open({type: 'chat', ...body}, ++this.epoch);
  }

  resume(after) {
    this.open({type: 'resume', stream_id: this.lane.streamId, after}, ++this.epoch);
  }

  open(first, epoch) {
    const lane = this.lane;
    lane.logNote(`new WebSocket('${new URL(API.ws).pathname}')`);
    const socket = new WebSocket(API.ws);
    this.socket = socket;
    socket.onopen = () => {
      if (!this.current(epoch)) return;
      lane.logNote('WebSocket open · keep-alive here is ping/pong control frames, answered by the browser and invisible to JavaScript');
      this.send(first);
    };
    socket.onmessage = (message) => {
      if (!this.current(epoch)) return;
      const bytes = byteLength(message.data);
      lane.addBytes(bytes);
      const event = this.decode(message.data);
      if (!event || (event.stream_id && event.stream_id !== lane.streamId)) return;  // another stream's
      lane.receive(event, {raw: message.data, bytes});
    };
    socket.onclose = (close) => {
      if (!this.current(epoch)) return;
      lane.connectionEnded(`WebSocket closed (code ${close.code}${close.reason ? `, ${close.reason}` : ''})`);
    };
    socket.onerror = () => this.current(epoch) && lane.logNote('WebSocket error', 'bad');
  }

  send(message) {
    const text = JSON.stringify(message);
    this.lane.logUp(`WS ${message.type}`, text);
    this.socket.send(text);
  }

  stop() {
    if (this.socket?.readyState !== WebSocket.OPEN) return super.stop();
    this.send({type: 'cancel', stream_id: this.lane.streamId});  // in-band, on the same socket
    return Promise.resolve();
  }

  cut() {
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, 'closed by the page');
  }
}

const TRANSPORTS = {fetch: FetchSSE, eventsource: EventSourceSSE, ws: WebSocketClient};

/* ---------------------------------------------------------------- a lane */

/** One stream: its controls, answer, figures and wire log. */
class Lane {
  constructor(index, app) {
    this.index = index;
    this.app = app;
    this.root = $('#lane-template').content.firstElementChild.cloneNode(true);
    this.root.dataset.lane = String(index);
    this.el = {};
    for (const name of ['downstream', 'upstream', 'combo', 'status', 'ttft', 'rate', 'chars', 'events', 'bytes', 'beats',
                        'seqcheck', 'elapsed', 'answer', 'text', 'outcome', 'log', 'log-count',
                        'down-label', 'up-label', 'provider-name', 'lane-name']) {
      this.el[name] = $(`.${name}`, this.root);
    }
    this.el['lane-name'].textContent = `Lane ${'AB'[index] || index + 1}`;
    this.el.downstream.addEventListener('change', () => this.describe());
    this.el.upstream.addEventListener('change', () => this.describe());
    this.transport = null;
    this.conversation = new ConversationView(this);
    this.reset();
  }

  reset() {
    this.streamId = null;
    this.lastSeq = -1;
    this.resumeAfter = null;
    this.t0 = 0;
    this.firstAt = null;
    this.lastDeltaAt = null;
    this.endAt = null;
    this.counts = {events: 0, bytes: 0, beats: 0, deltas: 0, chars: 0, gaps: 0, dupes: 0, resumes: 0};
    this.terminal = null;
    this.stopTimer = null;
    this.sentConversation = null;  // the conversation this stream continues, if any
    delete this.root.dataset.reason;
    this.el.text.textContent = '';
    this.el.log.replaceChildren();
    this.el.outcome.hidden = true;
    this.el.outcome.className = 'outcome';
    this.setState('idle');
    this.render();
  }

  fillUpstreams(upstreams, chosen, combo) {
    const select = this.el.upstream;
    select.replaceChildren(...upstreams.map((u) => {
      const option = new Option(`${u.name} — ${u.kind}, ${u.transport.toUpperCase()}`, u.name);
      option.dataset.transport = u.transport;
      option.dataset.kind = u.kind;
      option.title = u.url;
      if (combo && combo.split('-')[1] !== u.transport) option.disabled = true;
      return option;
    }));
    if (chosen && upstreams.some((u) => u.name === chosen)) select.value = chosen;
    if (combo) {
      for (const option of this.el.downstream.options) {
        option.disabled = DOWNSTREAM_TRANSPORT[option.value] !== combo.split('-')[0];
      }
      const usable = [...this.el.downstream.options].find((o) => !o.disabled);
      if (this.el.downstream.selectedOptions[0]?.disabled && usable) this.el.downstream.value = usable.value;
    }
    this.describe();
  }

  get downstream() { return this.el.downstream.value; }

  get upstreamOption() { return this.el.upstream.selectedOptions[0]; }

  get combo() {
    const up = this.upstreamOption?.dataset.transport || '?';
    return `${DOWNSTREAM_TRANSPORT[this.downstream]}-${up}`;
  }

  describe() {
    const option = this.upstreamOption;
    this.el.combo.textContent = this.combo;
    this.el['down-label'].textContent = DOWNSTREAM_LABEL[this.downstream];
    this.el['up-label'].textContent = option ? option.dataset.transport.toUpperCase() : '';
    const kind = option && option.dataset.kind !== option.value ? ` · ${option.dataset.kind}` : '';
    this.el['provider-name'].textContent = option ? `${option.value}${kind}` : 'provider';
  }

  get running() {
    return ['connecting', 'streaming', 'stopping', 'resuming'].includes(this.root.dataset.state);
  }

  setState(state, label) {
    this.root.dataset.state = state;
    this.el.status.textContent = label || state;
    this.el.downstream.disabled = this.running;
    this.el.upstream.disabled = this.running;
    this.conversation.lock(this.running);
    this.app.refreshButtons();
  }

  // -- actions ---------------------------------------------------------------------

  start(prompt, trace, converse) {
    this.transport?.close();
    this.reset();
    this.streamId = newStreamId();
    this.root.dataset.streamId = this.streamId;
    this.t0 = performance.now();
    this.setState('connecting');
    this.tick();
    const body = {messages: [{role: 'user', content: prompt}], upstream: this.el.upstream.value,
                  stream_id: this.streamId, trace};
    if (converse) {
      body.conversation_id = this.sentConversation = this.conversation.idForStart();
      this.conversation.pending(prompt);
    }
    this.transport = new TRANSPORTS[this.downstream](this);
    this.transport.start(body);
  }

  async stop() {
    if (!this.running) return;
    this.setState('stopping');
    this.stopTimer = setTimeout(() => {
      if (this.terminal) return;
      this.logNote(`no terminal event ${STOP_WAIT_MS} ms after the stop: closing the connection here`, 'bad');
      this.transport.close();
      this.finish('stopped', 'stopped locally');
    }, STOP_WAIT_MS);
    await this.transport.stop();
  }

  async drop(gapMs) {
    if (!['streaming', 'connecting'].includes(this.root.dataset.state)) return;
    const after = this.lastSeq;
    this.counts.resumes++;
    this.resumeAfter = after;
    this.setState('resuming', `dropped · resuming after seq ${after}`);
    this.logNote(`✂ the page drops its connection after seq ${after}; the relay keeps the provider going for `
                 + `disconnect_grace_s while it waits for a resume`, 'drop');
    this.transport.drop();
    await sleep(gapMs);
    // A Stop pressed during the gap still resumes, to receive its done/cancelled.
    if (this.terminal || !['resuming', 'stopping'].includes(this.root.dataset.state)) return;
    this.transport.resume(after);
  }

  async postCancel() {
    this.logUp(`POST /v1/streams/${this.streamId}/cancel`, '');
    try {
      const response = await fetch(API.cancel(this.streamId), {method: 'POST'});
      const body = await response.json().catch(() => ({}));
      this.logNote(`cancel → HTTP ${response.status} ${JSON.stringify(body)}`, response.ok ? '' : 'bad');
    } catch (error) {
      this.logNote(`cancel failed: ${error.message}`, 'bad');
    }
  }

  // -- what the transports report ----------------------------------------------------

  addBytes(count) {
    this.counts.bytes += count;
    this.scheduleRender();
  }

  receive(event, meta) {
    const now = performance.now() - this.t0;
    const hasSeq = typeof event.seq === 'number';
    let check = '';
    if (hasSeq) {
      if (event.seq <= this.lastSeq) {
        this.counts.dupes++;
        check = `✗ duplicate: seq ${event.seq} again`;
      } else if (event.seq !== this.lastSeq + 1) {
        this.counts.gaps++;
        check = `✗ gap: expected seq ${this.lastSeq + 1}`;
      }
      if (this.resumeAfter !== null) {
        const ok = event.seq === this.resumeAfter + 1;
        this.logNote(`resumed after seq ${this.resumeAfter}, next seq ${event.seq} ${ok ? '✓' : '✗'}`
                     + (ok ? ' — nothing lost, nothing twice (text that came while away arrives as fewer, larger deltas)' : ''),
                     ok ? 'resumed' : 'bad');
        this.resumeAfter = null;
      }
      this.lastSeq = Math.max(this.lastSeq, event.seq);
    }
    this.counts.events++;
    if (this.root.dataset.state === 'connecting' || this.root.dataset.state === 'resuming') {
      this.setState('streaming');
    }
    if (event.type === 'trace') {
      this.logEntry(now, event.dir === 'out' ? 'prov-out' : 'prov-in',
                    event.dir === 'out' ? 'relay → provider' : 'provider → relay', event.seq, event.data,
                    byteLength(event.data), check);
    } else {
      this.logEntry(now, 'down', 'relay → client', event.seq, meta.raw, meta.bytes, check, event.type);
    }
    switch (event.type) {
      case 'start':
        this.el.combo.textContent = event.combo;
        break;
      case 'delta':
        if (this.firstAt === null) this.firstAt = now;
        this.lastDeltaAt = now;
        this.counts.deltas++;
        this.counts.chars += [...event.text].length;  // code points, as a reader counts them
        this.el.text.append(event.text);
        this.el.answer.scrollTop = this.el.answer.scrollHeight;
        break;
      case 'done':
        this.finish('done', event.reason === 'cancelled' ? 'cancelled' : `done · ${event.reason}`, event);
        break;
      case 'error':
        this.finish('error', `error · ${event.code}`, event);
        break;
      default:
        break;
    }
    this.scheduleRender();
  }

  heartbeat(line) {
    this.counts.beats++;
    this.logEntry(performance.now() - this.t0, 'beat', 'heartbeat', null, line, byteLength(line) + 2);
    this.scheduleRender();
  }

  refused(status, error) {
    const event = {type: 'error', code: error.code || `http_${status}`, message: error.message || `HTTP ${status}`};
    this.logEntry(performance.now() - this.t0, 'down', `HTTP ${status}`, null, JSON.stringify({error}), 0, '', 'error');
    this.finish('error', `refused · ${event.code}`, event);
  }

  connectionLost(why) {
    if (this.terminal) return;
    this.logNote(why, 'bad');
    this.finish('error', 'connection lost', {type: 'error', code: 'connection_lost', message: why});
  }

  connectionEnded(why) {
    if (this.terminal) {
      this.logNote(why);
      return;
    }
    if (this.root.dataset.state === 'resuming') return;  // our own drop
    this.connectionLost(`${why} before a terminal event`);
  }

  finish(state, label, event) {
    if (this.terminal) return;
    this.terminal = event || {type: state};
    this.endAt = performance.now() - this.t0;
    clearTimeout(this.stopTimer);
    this.transport?.close();
    this.setState(state === 'done' && event?.reason === 'cancelled' ? 'stopped' : state, label);
    this.root.dataset.reason = event?.reason || event?.code || '';
    const outcome = this.el.outcome;
    outcome.hidden = false;
    outcome.className = `outcome ${this.root.dataset.state}`;
    if (state === 'error') {
      outcome.replaceChildren(
        strong(`${event.code}`), ` ${event.message || ''}`,
        event.upstream_code ? small(` vendor code ${event.upstream_code}`) : '',
        event.retryable ? small(' · retryable') : '');
    } else if (event?.reason === 'cancelled') {
      outcome.replaceChildren(strong('stopped'), ' done · reason cancelled: the relay closed the provider connection');
    } else if (event) {
      const usage = event.usage ? Object.entries(event.usage).map(([k, v]) => `${k} ${v}`).join(', ') : 'no usage reported';
      outcome.replaceChildren(strong(`done · ${event.reason}`), ` ${usage}`);
    } else {
      outcome.replaceChildren(strong(label));
    }
    this.render();
    // The relay sends the terminal event after saving the answer, so it is there to read now.
    if (this.sentConversation) {
      this.conversation.afterTurn(this.sentConversation, this.streamId, this.el.text.textContent);
    }
    this.app.laneFinished();
  }

  // -- the wire log -------------------------------------------------------------------

  logUp(title, body) {
    this.logEntry(performance.now() - this.t0, 'up', 'client → relay', null, body ? `${title}\n${body}` : title,
                  body ? byteLength(body) : 0);
  }

  logNote(text, tone = '') {
    this.logEntry(performance.now() - this.t0, `note ${tone}`, 'note', null, text, 0);
  }

  logEntry(at, kind, label, seq, raw, bytes, check = '', type = '') {
    const log = this.el.log;
    const item = document.createElement('li');
    item.className = `entry ${kind}${check ? ' bad' : ''}`;
    if (type) item.dataset.type = type;
    if (seq !== null && seq !== undefined) item.dataset.seq = String(seq);
    const head = document.createElement('div');
    head.className = 'entry-head';
    head.append(span('time', `+${at.toFixed(1)} ms`), span('tag', label));
    if (seq !== null && seq !== undefined) head.append(span('seq', `seq ${seq}`));
    if (type) head.append(span('type', type));
    if (bytes) head.append(span('size', `${bytes} B`));
    if (check) head.append(span('check', check));
    const body = document.createElement('pre');
    body.className = 'raw';
    if (raw.length > RAW_PREVIEW) {
      body.textContent = `${raw.slice(0, RAW_PREVIEW)}…`;
      const more = document.createElement('button');
      more.type = 'button';
      more.className = 'more';
      more.textContent = `show all ${raw.length} chars`;
      more.addEventListener('click', () => { body.textContent = raw; more.remove(); });
      item.append(head, body, more);
    } else {
      body.textContent = raw;
      item.append(head, body);
    }
    const pinned = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    while (log.childElementCount > LOG_LIMIT) log.firstElementChild.remove();
    if (pinned) log.scrollTop = log.scrollHeight;
    this.el['log-count'].textContent = `${log.childElementCount} entries`;
  }

  // -- figures ------------------------------------------------------------------------

  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  tick() {
    if (!this.running) return;
    this.render();
    setTimeout(() => this.tick(), 100);
  }

  render() {
    const c = this.counts;
    const el = this.el;
    const now = this.endAt ?? (this.t0 ? performance.now() - this.t0 : null);
    el.ttft.textContent = this.firstAt === null ? '–' : ms(this.firstAt);
    const streamed = this.lastDeltaAt !== null && this.lastDeltaAt > this.firstAt ? (this.lastDeltaAt - this.firstAt) / 1000 : 0;
    el.rate.textContent = streamed > 0 ? ((c.deltas - 1) / streamed).toFixed(1) : '–';
    el.chars.textContent = String(c.chars);
    el.events.textContent = String(c.events);
    el.bytes.textContent = c.bytes.toLocaleString('en');
    el.beats.textContent = String(c.beats);
    if (c.events === 0) el.seqcheck.textContent = '–';
    else if (c.gaps || c.dupes) el.seqcheck.textContent = `✗ ${c.gaps} gaps, ${c.dupes} dupes`;
    else el.seqcheck.textContent = `✓ 0…${this.lastSeq}${c.resumes ? ` ↻${c.resumes}` : ''}`;
    el.seqcheck.title = `${c.resumes} resume(s); ${c.gaps} gaps, ${c.dupes} duplicates`;
    el.seqcheck.classList.toggle('bad', Boolean(c.gaps || c.dupes));
    el.elapsed.textContent = now === null ? '–' : ms(now);
  }
}

function span(className, text) {
  const node = document.createElement('span');
  node.className = className;
  node.textContent = text;
  return node;
}

function strong(text) {
  const node = document.createElement('strong');
  node.textContent = text;
  return node;
}

function small(text) {
  const node = document.createElement('small');
  node.textContent = text;
  return node;
}

/* ---------------------------------------------------------------- a lane's conversation */

/** A conversation id the relay accepts (1-64 of A-Z a-z 0-9 _ -). randomUUID exists only in
    secure contexts (https, localhost); elsewhere, 128 random bits in hex. */
function newConversationId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

const when = (iso) => new Date(iso).toLocaleString([], {month: 'short', day: 'numeric',
                                                        hour: '2-digit', minute: '2-digit'});

/** The conversation a lane continues: its id, a picker of the caller's conversations, and the
    turns. The page keeps no history of its own: the turns shown are what the relay saved
    (GET /v1/conversations/{id}), which is what the provider is sent next time. */
class ConversationView {
  constructor(lane) {
    this.lane = lane;
    this.id = null;   // made on the first Start or by "New conversation", or picked
    this.saved = null;  // the last read: {system, messages}, oldest first
    this.known = [];  // the caller's conversations, newest first
    this.el = {};
    for (const name of ['conversation-bar', 'conversation-pick', 'new-conversation', 'conversation-note',
                        'turns-box', 'turns', 'turn-count']) {
      this.el[name] = $(`.${name}`, lane.root);
    }
    this.el['new-conversation'].addEventListener('click', () => this.choose(newConversationId(), false));
    this.el['conversation-pick'].addEventListener('change', (e) => e.target.value && this.choose(e.target.value));
  }

  show(on) {
    this.el['conversation-bar'].hidden = !on;
    this.el['turns-box'].hidden = !on;
    if (on) this.refreshList();
    this.renderPick();
  }

  lock(running) {
    this.el['conversation-pick'].disabled = running;
    this.el['new-conversation'].disabled = running;
  }

  idForStart() {
    if (!this.id) this.choose(newConversationId(), false);
    return this.id;
  }

  /** Continue `id` from the next Start on; `stored` says whether the relay may already have turns of it. */
  choose(id, stored = true) {
    this.id = id;
    this.saved = null;
    this.lane.root.dataset.conversation = id;
    this.el['conversation-note'].textContent = `in a terminal: matrix chat --conversation ${id}`;
    this.renderPick();
    this.renderTurns();
    if (stored) this.read(id);
  }

  /** The user's message, under the saved turns, while its answer streams into the Answer box. */
  pending(prompt) {
    this.renderTurns({role: 'user', text: prompt, pending: true});
  }

  async afterTurn(id, streamId, shown) {
    const messages = await this.read(id, {streamId, shown});
    if (messages) {
      this.lane.logNote(`the relay saved the turn: GET /v1/conversations/${id} → ${messages.length} messages`);
    }
    this.refreshList();
  }

  /** Read what the relay saved of `id` and show it; the messages, or null if it could not be read. */
  async read(id, check = null) {
    let response;
    let body;
    try {
      response = await fetch(API.conversation(id));
      body = await response.json().catch(() => ({}));
    } catch (error) {
      body = {error: {message: error.message}};
    }
    if (id !== this.id) return null;  // another conversation was picked meanwhile
    if (response?.status === 404) {
      this.saved = {messages: []};
    } else if (!response?.ok) {
      const why = body.error?.code || body.error?.message || `HTTP ${response?.status}`;
      this.el['turn-count'].textContent = `cannot read it: ${why}`;
      return null;
    } else {
      this.saved = body;
    }
    this.renderTurns(null, check);
    return this.saved.messages;
  }

  renderTurns(pending = null, check = null) {
    const messages = this.saved?.messages || [];
    const items = messages.map((m) => this.turn(m, check));
    if (this.saved?.system) items.unshift(this.turn({role: 'system', text: this.saved.system}));
    if (pending) items.push(this.turn(pending));
    this.el.turns.replaceChildren(...items);
    this.el['turn-count'].textContent = this.saved ? `${messages.length} messages saved by the relay` : '';
    this.el.turns.scrollTop = this.el.turns.scrollHeight;
  }

  /** One message. The answer just streamed is checked against what the relay saved of it. */
  turn(message, check = null) {
    const item = document.createElement('li');
    item.className = `turn ${message.role}${message.pending ? ' pending' : ''}`;
    const head = document.createElement('div');
    head.className = 'turn-head';
    head.append(span('who', message.role === 'user' ? 'you' : message.role));
    if (message.pending) head.append(span('fact', 'sent with conversation_id; the answer streams below'));
    if (message.role === 'assistant') {
      head.append(span(`fact ending${message.status === 'stop' ? '' : ' other'}`, message.status || '?'));
      if (typeof message.ttft_ms === 'number') head.append(span('fact', `TTFT ${ms(message.ttft_ms)}`));
      if (message.combo) head.append(span('fact', `${message.combo} via ${message.upstream}`));
    }
    if (check && message.stream_id === check.streamId) {
      const same = message.text === check.shown;
      head.append(span(`check ${same ? 'ok' : 'bad'}`,
                       same ? '✓ saved exactly as streamed' : '✗ saved text differs from what streamed'));
    }
    const text = document.createElement('div');
    text.className = 'turn-text';
    text.textContent = message.text;
    item.append(head, text);
    return item;
  }

  /** The caller's conversations, for the picker (the relay knows the caller by key or address). */
  async refreshList() {
    try {
      const response = await fetch(API.conversations);
      if (!response.ok) return;
      this.known = (await response.json()).data || [];
    } catch {
      return;  // the picker keeps what it had; a Start will say what is wrong
    }
    this.renderPick();
  }

  renderPick() {
    const options = this.known.map((c) => new Option(`${c.title} · ${when(c.updated_at)} · ${c.id.slice(0, 8)}`, c.id));
    if (!this.id) {
      options.unshift(new Option('a new one, on the next Start', ''));
    } else if (!this.known.some((c) => c.id === this.id)) {
      options.unshift(new Option(`new · ${this.id.slice(0, 8)}`, this.id));
    }
    const pick = this.el['conversation-pick'];
    pick.replaceChildren(...options);
    pick.value = this.id || '';
  }
}

/* ---------------------------------------------------------------- the #mock directive */

const DIRECTIVE = /^[ \t]*#mock(?=[ \t]|$).*$/m;

/** The key=value pairs of the prompt's `#mock` line (an empty Map when there is none). */
function readDirective(prompt) {
  const match = prompt.match(DIRECTIVE);
  const pairs = new Map();
  if (!match) return pairs;
  for (const item of match[0].trim().slice('#mock'.length).trim().split(/\s+/)) {
    const at = item.indexOf('=');
    if (at > 0) pairs.set(item.slice(0, at), item.slice(at + 1));
  }
  return pairs;
}

/** The prompt with its `#mock` line rewritten: `changes` maps key -> value, or null to remove. */
function writeDirective(prompt, changes) {
  const pairs = readDirective(prompt);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null) pairs.delete(key);
    else pairs.set(key, value);
  }
  const line = `#mock ${[...pairs].map(([k, v]) => `${k}=${v}`).join(' ')}`.trimEnd();
  if (DIRECTIVE.test(prompt)) return prompt.replace(DIRECTIVE, line);
  return `${prompt.replace(/\s+$/, '')}\n${line}`;
}

/** A fault button is on when the directive has its key (for `fault`, its fault's name, whatever N). */
function faultIsOn(button, pairs) {
  const value = pairs.get(button.dataset.key);
  if (value === undefined) return false;
  if (button.dataset.key !== 'fault') return value !== '0';
  return value.split(':')[0] === button.dataset.value.split(':')[0];
}

/* ---------------------------------------------------------------- the page */

class App {
  constructor() {
    this.lanes = [];
    this.upstreams = null;
    this.prompt = $('#prompt');
    this.buttons = {start: $('#start'), stop: $('#stop'), drop: $('#drop')};
    this.buttons.start.addEventListener('click', () => this.start());
    this.buttons.stop.addEventListener('click', () => this.stop());
    this.buttons.drop.addEventListener('click', () => this.drop());
    $('#race').addEventListener('change', (e) => this.setRace(e.target.checked));
    $('#conversation').addEventListener('change', () => this.showConversations());
    this.prompt.addEventListener('input', () => this.showFaults());
    this.prompt.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) this.start();
    });
    for (const button of document.querySelectorAll('.fault')) {
      button.addEventListener('click', () => this.toggleFault(button));
    }
    this.addLane();
    this.showFaults();
    this.loadUpstreams();
  }

  async loadUpstreams() {
    const info = $('#relay-info');
    try {
      const response = await fetch(API.upstreams);
      this.upstreams = await response.json();
    } catch (error) {
      info.textContent = `cannot reach the relay: ${error.message}`;
      info.classList.add('bad');
      return;
    }
    const {combo, upstreams} = this.upstreams;
    info.replaceChildren(
      span('', combo ? `pinned to ${combo}` : 'all four combinations'), ' · ',
      span('', `${upstreams.length} upstreams: ${upstreams.map((u) => `${u.name} (${u.transport})`).join(', ')}`));
    this.lanes.forEach((lane, i) => this.fillLane(lane, i));
    this.refreshButtons();
  }

  fillLane(lane, index) {
    const {upstreams, combo} = this.upstreams;
    // A second lane starts on a different combination, so a race compares something.
    const chosen = index === 0 ? this.upstreams.default
      : (upstreams.find((u) => u.transport !== this.lanes[0].upstreamOption?.dataset.transport) || upstreams[0]).name;
    if (index > 0 && !combo) lane.el.downstream.value = this.lanes[0].downstream === 'ws' ? 'fetch' : 'ws';
    lane.fillUpstreams(upstreams, chosen, combo);
  }

  addLane() {
    const lane = new Lane(this.lanes.length, this);
    this.lanes.push(lane);
    $('#lanes').append(lane.root);
    if (this.upstreams) this.fillLane(lane, this.lanes.length - 1);
    lane.conversation.show($('#conversation').checked);
    return lane;
  }

  setRace(on) {
    const lanes = $('#lanes');
    lanes.classList.toggle('race', on);
    lanes.classList.toggle('single', !on);
    if (on && this.lanes.length < 2) this.addLane();
    if (!on) {
      for (const lane of this.lanes.slice(1)) {
        lane.transport?.close();
        lane.root.remove();
      }
      this.lanes.length = 1;
    }
    $('#race-result').textContent = '';
    this.refreshButtons();
  }

  start() {
    if (!this.upstreams || this.lanes.some((l) => l.running)) return;
    const trace = $('#trace').checked;
    $('#race-result').textContent = '';
    const converse = $('#conversation').checked;
    for (const lane of this.lanes) lane.start(this.prompt.value, trace, converse);
  }

  stop() {
    for (const lane of this.lanes) lane.stop();
  }

  showConversations() {
    for (const lane of this.lanes) lane.conversation.show($('#conversation').checked);
  }

  drop() {
    const gap = Math.max(0, Number($('#gap').value) || 0);
    for (const lane of this.lanes) lane.drop(gap);
  }

  refreshButtons() {
    if (!this.buttons) return;
    const running = this.lanes.some((l) => l.running);
    this.buttons.start.disabled = running || !this.upstreams;
    this.buttons.stop.disabled = !running;
    this.buttons.drop.disabled = !this.lanes.some((l) => ['streaming', 'connecting'].includes(l.root.dataset.state));
    $('#race').disabled = running;
    $('#conversation').disabled = running;
  }

  laneFinished() {
    this.refreshButtons();
    if (this.lanes.length < 2 || this.lanes.some((l) => !l.terminal)) return;
    const [a, b] = this.lanes;
    const name = (lane) => `${lane.el['lane-name'].textContent} (${lane.combo} via ${lane.el.upstream.value})`;
    const verdict = (what, x, y) => {
      if (x === null || y === null) return `${what}: no contest`;
      const [win, lose, dx] = x <= y ? [a, b, y - x] : [b, a, x - y];
      return `${what}: ${name(win)} by ${ms(dx)}`;
    };
    $('#race-result').textContent = `Race — ${verdict('first token', a.firstAt, b.firstAt)}; `
                                    + `${verdict('finished', a.endAt, b.endAt)}`;
  }

  toggleFault(button) {
    let changes;
    if (button.dataset.clear) {
      changes = {fault: null, first_token_ms: null, split: null};
    } else {
      changes = {[button.dataset.key]: faultIsOn(button, readDirective(this.prompt.value)) ? null : button.dataset.value};
    }
    this.prompt.value = writeDirective(this.prompt.value, changes);
    this.showFaults(button);
  }

  showFaults(clicked) {
    const pairs = readDirective(this.prompt.value);
    const active = [];
    for (const button of document.querySelectorAll('.fault[data-key]')) {
      const on = faultIsOn(button, pairs);
      button.classList.toggle('active', on);
      button.setAttribute('aria-pressed', String(on));
      if (on) active.push(button);
    }
    const shown = clicked?.classList.contains('active') ? clicked : active[active.length - 1];
    $('#hint').textContent = shown ? shown.dataset.hint : 'Pick a misbehaviour to see what the client gets in each case.';
  }
}

window.matrixDemo = new App();
