// Flotilla's board: plain JavaScript, no build step. The control plane
// serves this file; every call goes to its API on the same origin with the
// session cookie.
'use strict';

const COLUMNS = ['backlog', 'planning', 'implementation', 'review', 'done'];
const TITLES = { backlog: 'Backlog', planning: 'Planning', implementation: 'Implementation', review: 'Review', done: 'Done' };
const $ = (id) => document.getElementById(id);

const board = { tasks: new Map(), desktops: new Map(), revision: 0, events: null };
const viewerName = localStorage.getItem('flotilla-name') ||
  (() => { const n = 'viewer-' + Math.random().toString(16).slice(2, 6); localStorage.setItem('flotilla-name', n); return n; })();

class SignedOut extends Error {}

async function api(method, path, body) {
  const options = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    options.headers['content-type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch('/api/v1' + path, options);
  if (response.status === 401) {
    show('login');
    throw new SignedOut('sign in first');
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function show(section) {
  for (const id of ['login', 'board', 'nodes', 'desktop']) $(id).hidden = id !== section;
  $('nav-board').classList.toggle('active', section === 'board');
  $('nav-nodes').classList.toggle('active', section === 'nodes');
  $('logout').hidden = section === 'login';
}

// ---- signing in ----

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('login-error').textContent = '';
  try {
    await api('POST', '/session', { token: $('login-token').value.trim() });
    $('login-token').value = '';
    route();
  } catch (error) {
    $('login-error').textContent = error.message;
  }
});

$('logout').addEventListener('click', async () => {
  try { await api('DELETE', '/session'); } catch (_) { /* signed out anyway */ }
  stopWatching();
  show('login');
});

// A sign-in link carries a one-time code: #login=CODE.
async function redeemLoginCode() {
  const match = location.hash.match(/^#login=([A-Za-z0-9_-]+)$/);
  if (!match) return;
  history.replaceState(null, '', location.pathname + '#board');
  try {
    await api('POST', '/session', { code: match[1] });
  } catch (error) {
    show('login');
    $('login-error').textContent = error.message;
  }
}

// ---- the board ----

async function loadBoard() {
  const [tasks, desktops] = await Promise.all([api('GET', '/tasks'), api('GET', '/desktops')]);
  board.tasks = new Map(tasks.tasks.map((t) => [t.id, t]));
  board.desktops = new Map(desktops.desktops.map((d) => [d.id, d]));
  board.revision = Math.min(tasks.revision, desktops.revision);
  render();
  watch();
}

function watch() {
  stopWatching();
  const events = new EventSource('/api/v1/watch?from=' + board.revision, { withCredentials: true });
  board.events = events;
  events.addEventListener('change', (event) => {
    const change = JSON.parse(event.data);
    board.revision = Math.max(board.revision, change.revision);
    switch (change.kind) {
      case 'task_put': board.tasks.set(change.task.id, change.task); break;
      case 'task_deleted': board.tasks.delete(change.id); break;
      case 'desktop_put': board.desktops.set(change.desktop.id, desktopFromChange(change.desktop)); break;
      case 'desktop_deleted': board.desktops.delete(change.id); break;
      default: return;
    }
    render();
  });
  events.onopen = () => $('live').classList.add('on');
  events.onerror = () => {
    $('live').classList.remove('on');
    // The browser reconnects by itself; a stream that closed for good
    // (revision gone) is reloaded.
    if (events.readyState === EventSource.CLOSED) setTimeout(() => loadBoard().catch(report), 1000);
  };
}

function stopWatching() {
  if (board.events) board.events.close();
  board.events = null;
}

// A change carries the stored desktop; the list's view names the task.
function desktopFromChange(d) {
  return { id: d.id, task: d.task_id, node: d.node_id, state: d.state, intent: d.intent, reason: d.reason, generation: d.generation };
}

function desktopState(task) {
  const desktop = task.desktop_id && board.desktops.get(task.desktop_id);
  if (!desktop) return null;
  if (desktop.state === 'pending') {
    return desktop.reason ? { text: 'no capacity: ' + desktop.reason, css: 'pending-reason', desktop }
      : { text: 'placing…', css: '', desktop };
  }
  if (desktop.state === 'starting') return { text: 'starting…', css: '', desktop };
  if (desktop.state === 'failed') return { text: 'failed: ' + (desktop.reason || ''), css: 'failed', desktop };
  return { text: desktop.state, css: '', desktop };
}

function render() {
  const columns = $('columns');
  columns.replaceChildren();
  for (const column of COLUMNS) {
    const div = document.createElement('div');
    div.className = 'column';
    div.dataset.column = column;
    const heading = document.createElement('h2');
    heading.textContent = TITLES[column];
    div.append(heading);
    div.addEventListener('dragover', (event) => { event.preventDefault(); div.classList.add('over'); });
    div.addEventListener('dragleave', () => div.classList.remove('over'));
    div.addEventListener('drop', (event) => {
      event.preventDefault();
      div.classList.remove('over');
      const id = event.dataTransfer.getData('text/plain');
      if (id) moveTask(id, column);
    });
    const tasks = [...board.tasks.values()].filter((t) => t.column === column)
      .sort((a, b) => a.position - b.position);
    for (const task of tasks) div.append(card(task));
    columns.append(div);
  }
}

function card(task) {
  const div = document.createElement('div');
  div.className = 'card';
  div.draggable = true;
  div.dataset.task = task.id;
  div.addEventListener('dragstart', (event) => event.dataTransfer.setData('text/plain', task.id));
  const title = document.createElement('div');
  title.className = 'title';
  title.textContent = task.title;
  div.append(title);
  if (task.repository) {
    const repo = document.createElement('div');
    repo.className = 'repo';
    repo.textContent = task.repository;
    repo.title = 'repository';
    div.append(repo);
  }
  if (task.usage && task.usage.calls) {
    const usage = document.createElement('div');
    usage.className = 'usage';
    const u = task.usage;
    const tokens = (u.input_tokens || 0) + (u.output_tokens || 0)
      + (u.cache_read_tokens || 0) + (u.cache_write_tokens || 0);
    const dollars = (u.cost_nanos || 0) / 1e9;
    usage.textContent = `${tokens.toLocaleString()} tokens · $${dollars.toFixed(dollars < 1 ? 4 : 2)} · ${u.calls} calls`;
    usage.title = `model usage: ${u.input_tokens || 0} in, ${u.output_tokens || 0} out, `
      + `${u.cache_read_tokens || 0} cache read, ${u.cache_write_tokens || 0} cache write`;
    div.append(usage);
  }
  if (task.llm_refused) {
    const refused = document.createElement('div');
    refused.className = 'state refused';
    refused.textContent = `agent stopped: ${task.llm_refused}`;
    div.append(refused);
  }
  const state = desktopState(task);
  if (state) {
    const line = document.createElement('div');
    line.className = 'state ' + state.css;
    line.textContent = 'desktop ' + state.desktop.id + ': ' + state.text;
    div.append(line);
    if (state.desktop.state === 'running') {
      const img = document.createElement('img');
      img.alt = 'desktop ' + state.desktop.id;
      img.dataset.desktop = state.desktop.id;
      img.addEventListener('click', () => openDesktop(state.desktop.id, task.title));
      const cached = thumbnails.get(state.desktop.id);
      if (cached) img.src = cached;
      div.append(img);
    }
  }
  const actions = document.createElement('div');
  actions.className = 'actions';
  const edit = document.createElement('button');
  edit.textContent = 'Edit';
  edit.addEventListener('click', async () => {
    const title = prompt('Title', task.title);
    if (title && title !== task.title) await api('PATCH', '/tasks/' + task.id, { title }).catch(report);
  });
  const remove = document.createElement('button');
  remove.textContent = 'Delete';
  remove.addEventListener('click', async () => {
    if (confirm('Delete "' + task.title + '"?')) await api('DELETE', '/tasks/' + task.id).catch(report);
  });
  actions.append(edit, remove);
  div.append(actions);
  return div;
}

async function moveTask(id, column) {
  try {
    await api('POST', '/tasks/' + id + '/move', { column });
  } catch (error) {
    report(error);
  }
}

function report(error) {
  if (error instanceof SignedOut) return;
  $('board-error').textContent = error.message;
  setTimeout(() => { $('board-error').textContent = ''; }, 5000);
}

$('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const body = { title: $('create-title').value };
    const repository = $('create-repository').value.trim();
    if (repository) body.repository = repository;
    await api('POST', '/tasks', body);
    $('create-title').value = '';
    $('create-repository').value = '';
  } catch (error) {
    report(error);
  }
});

// Live thumbnails: every 2 s for the cards on screen, revalidated by ETag.
const thumbnails = new Map();
async function refreshThumbnails() {
  if ($('board').hidden) return;
  for (const img of document.querySelectorAll('img[data-desktop]')) {
    const id = img.dataset.desktop;
    try {
      const response = await fetch('/api/v1/desktops/' + id + '/thumbnail?width=320', { cache: 'no-cache', credentials: 'same-origin' });
      if (!response.ok) continue;
      const url = URL.createObjectURL(await response.blob());
      const old = thumbnails.get(id);
      thumbnails.set(id, url);
      for (const same of document.querySelectorAll('img[data-desktop="' + id + '"]')) same.src = url;
      if (old) URL.revokeObjectURL(old);
    } catch (_) { /* next round */ }
  }
}
setInterval(refreshThumbnails, 2000);

// ---- nodes ----

const bytes = (n) => (n / (1 << 30)).toFixed(1) + ' GiB';
async function loadNodes() {
  try {
    const nodes = await api('GET', '/nodes');
    const rows = $('node-rows');
    rows.replaceChildren();
    for (const node of nodes) {
      const tr = document.createElement('tr');
      const cells = [
        node.name,
        node.status + (node.eligibility === 'ineligible' ? ', cordoned' : '') + (node.draining ? ', draining' : ''),
        node.desktops.allocated + ' / ' + node.desktops.capacity,
        (node.cpu_millis.allocated / 1000).toFixed(1) + ' / ' + (node.cpu_millis.capacity / 1000).toFixed(1),
        bytes(node.memory_bytes.allocated) + ' / ' + bytes(node.memory_bytes.capacity),
        bytes(node.gpu_memory_bytes.allocated) + ' / ' + bytes(node.gpu_memory_bytes.capacity),
      ];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement('td');
      const button = (label, method, path, body) => {
        const b = document.createElement('button');
        b.textContent = label;
        b.addEventListener('click', async () => {
          try { await api(method, path, body); } catch (error) { $('nodes-error').textContent = error.message; }
          loadNodes();
        });
        td.append(b);
      };
      const name = encodeURIComponent(node.name);
      if (node.eligibility === 'eligible') button('Cordon', 'POST', '/nodes/' + name + '/eligibility', { eligible: false });
      else button('Uncordon', 'POST', '/nodes/' + name + '/eligibility', { eligible: true });
      if (!node.draining) button('Drain', 'POST', '/nodes/' + name + '/drain', {});
      tr.append(td);
      rows.append(tr);
    }
  } catch (error) {
    if (!(error instanceof SignedOut)) $('nodes-error').textContent = error.message;
  }
}

// ---- a desktop, live ----

const view = { socket: null, id: null, decoder: null, waitingKey: true, control: false, closing: false, retry: 500, jpegTimer: null, supported: undefined };
const canvas = $('screen');
const context = canvas.getContext('2d');

function openDesktop(id, title) {
  closeDesktop();
  view.id = id;
  view.closing = false;
  $('desktop-title').textContent = title;
  location.hash = 'desktop/' + id;
  show('desktop');
  connectStream();
}

function closeDesktop() {
  view.closing = true;
  if (view.socket) {
    send({ type: 'release_all' });
    send({ type: 'release_control' });
    view.socket.close();
  }
  view.socket = null;
  if (view.decoder && view.decoder.state !== 'closed') view.decoder.close();
  view.decoder = null;
  clearInterval(view.jpegTimer);
  view.jpegTimer = null;
  setControl(false);
}

function send(message) {
  if (view.socket && view.socket.readyState === WebSocket.OPEN) view.socket.send(JSON.stringify(message));
}

function connectStream() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(scheme + '//' + location.host + '/api/v1/desktops/' + view.id + '/stream?name=' + encodeURIComponent(viewerName));
  socket.binaryType = 'arraybuffer';
  view.socket = socket;
  view.waitingKey = true;
  $('desktop-state').textContent = 'connecting…';
  socket.onopen = () => { view.retry = 500; $('desktop-state').textContent = 'live'; };
  socket.onmessage = (event) => {
    if (typeof event.data === 'string') return onEvent(JSON.parse(event.data));
    onFrame(event.data);
  };
  socket.onclose = () => {
    if (view.closing || view.socket !== socket) return;
    setControl(false);
    $('desktop-state').textContent = 'stream reconnecting…';
    view.retry = Math.min(view.retry * 2, 5000);
    setTimeout(() => { if (!view.closing && view.socket === socket) connectStream(); }, view.retry);
  };
}

function onEvent(event) {
  if (event.type === 'control') {
    const mine = event.holder === viewerName;
    setControl(mine);
    $('desktop-control').textContent = event.holder ? 'controlled by ' + event.holder + ' · ' + event.viewers + ' watching'
      : 'view only · ' + event.viewers + ' watching';
  } else if (event.type === 'error') {
    $('desktop-error').textContent = event.error;
    setTimeout(() => { $('desktop-error').textContent = ''; }, 4000);
  } else if (event.type === 'end') {
    $('desktop-state').textContent = 'ended: ' + event.reason;
  } else if (event.type === 'rate') {
    $('desktop-state').textContent = event.fps >= 30 && event.bitrate >= 4000000 ? 'live'
      : 'live · ' + (event.bitrate / 1e6).toFixed(1) + ' Mbit/s, ' + event.fps + ' fps (a viewer\'s link is slow)';
  } else if (event.type === 'skipped') {
    $('desktop-error').textContent = 'your connection fell behind: skipped ' + event.frames + ' frames';
    setTimeout(() => { $('desktop-error').textContent = ''; }, 4000);
  }
}

function setControl(on) {
  view.control = on;
  canvas.classList.toggle('control', on);
  $('take-control').hidden = on;
  $('release-control').hidden = !on;
}

// The frame header: flotilla_stream::frame.
function parseFrame(buffer) {
  const data = new DataView(buffer);
  return {
    kind: data.getUint8(0), keyframe: (data.getUint8(1) & 1) === 1,
    width: data.getUint32(4, true), height: data.getUint32(8, true),
    sequence: Number(data.getBigUint64(16, true)), payload: new Uint8Array(buffer, 32),
  };
}

// avc1.PPCCLL from the keyframe's sequence parameter set.
function codecOf(payload) {
  for (let i = 0; i + 7 < payload.length; i++) {
    if (payload[i] === 0 && payload[i + 1] === 0 && payload[i + 2] === 1 && (payload[i + 3] & 0x1f) === 7) {
      const hex = (b) => b.toString(16).padStart(2, '0');
      return 'avc1.' + hex(payload[i + 4]) + hex(payload[i + 5]) + hex(payload[i + 6]);
    }
  }
  return 'avc1.42e01f';
}

function onFrame(buffer) {
  const frame = parseFrame(buffer);
  // The server sends a few frames ahead of these acknowledgements, never
  // more: a slow link cannot build up lag in its buffers.
  send({ type: 'ack', sequence: frame.sequence });
  if (frame.kind !== 1 || view.jpegTimer) return;
  if (!('VideoDecoder' in window)) return startJpegFallback();
  if (view.waitingKey && !frame.keyframe) return;
  if (view.supported === undefined) {
    // Once per page: can this browser decode the stream's H.264?
    view.supported = null;
    VideoDecoder.isConfigSupported({ codec: codecOf(frame.payload) })
      .then((answer) => { view.supported = answer.supported; if (!answer.supported) startJpegFallback(); })
      .catch(() => { view.supported = false; startJpegFallback(); });
  }
  if (!view.supported) {
    if (view.supported === null) send({ type: 'keyframe' });
    return;
  }
  if (canvas.width !== frame.width || canvas.height !== frame.height) {
    canvas.width = frame.width;
    canvas.height = frame.height;
  }
  if (frame.keyframe && (!view.decoder || view.decoder.state === 'closed')) {
    view.decoder = new VideoDecoder({
      output: (picture) => { context.drawImage(picture, 0, 0); picture.close(); },
      error: () => { view.decoder = null; view.waitingKey = true; send({ type: 'keyframe' }); },
    });
    view.decoder.configure({ codec: codecOf(frame.payload), optimizeForLatency: true });
  }
  if (!view.decoder) return;
  view.waitingKey = false;
  view.decoder.decode(new EncodedVideoChunk({ type: frame.keyframe ? 'key' : 'delta', timestamp: frame.sequence, data: frame.payload }));
}

// Without WebCodecs: JPEG frames of the desktop, four a second.
function startJpegFallback() {
  if (view.jpegTimer) return;
  $('desktop-state').textContent = 'live (JPEG)';
  view.jpegTimer = setInterval(async () => {
    const response = await fetch('/api/v1/desktops/' + view.id + '/thumbnail?width=1280', { cache: 'no-cache', credentials: 'same-origin' });
    if (!response.ok) return;
    const bitmap = await createImageBitmap(await response.blob());
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    context.drawImage(bitmap, 0, 0);
  }, 250);
}

$('desktop-close').addEventListener('click', () => { closeDesktop(); location.hash = 'board'; });
$('take-control').addEventListener('click', () => { send({ type: 'take_control' }); canvas.focus(); });
$('release-control').addEventListener('click', () => { send({ type: 'release_all' }); send({ type: 'release_control' }); });

function position(event) {
  return {
    x: Math.max(0, Math.min(canvas.width - 1, event.offsetX * canvas.width / canvas.clientWidth)),
    y: Math.max(0, Math.min(canvas.height - 1, event.offsetY * canvas.height / canvas.clientHeight)),
  };
}
canvas.addEventListener('keydown', (event) => {
  if (!view.control) return;
  event.preventDefault();
  if (!event.repeat) send({ type: 'key', code: event.code, down: true });
});
canvas.addEventListener('keyup', (event) => {
  if (!view.control) return;
  event.preventDefault();
  send({ type: 'key', code: event.code, down: false });
});
canvas.addEventListener('blur', () => { if (view.control) send({ type: 'release_all' }); });
canvas.addEventListener('mousemove', (event) => { if (view.control) send({ type: 'motion', ...position(event) }); });
canvas.addEventListener('mousedown', (event) => {
  canvas.focus();
  if (!view.control) return;
  send({ type: 'motion', ...position(event) });
  send({ type: 'button', button: event.button, down: true });
});
canvas.addEventListener('mouseup', (event) => { if (view.control) send({ type: 'button', button: event.button, down: false }); });
canvas.addEventListener('contextmenu', (event) => { if (view.control) event.preventDefault(); });
canvas.addEventListener('wheel', (event) => {
  if (!view.control) return;
  event.preventDefault();
  send({ type: 'scroll', dx: event.deltaX, dy: event.deltaY });
}, { passive: false });
document.addEventListener('paste', (event) => {
  if (!view.control || $('desktop').hidden) return;
  const text = event.clipboardData.getData('text/plain');
  if (text) send({ type: 'paste', text: text.slice(0, 4096) });
});

// ---- routing ----

async function route() {
  await redeemLoginCode();
  const hash = location.hash.slice(1) || 'board';
  try {
    if (hash === 'nodes') {
      closeDesktop();
      show('nodes');
      await loadNodes();
    } else if (hash.startsWith('desktop/')) {
      if (view.id !== hash.slice(8) || !view.socket) {
        await loadBoard();
        openDesktop(hash.slice(8), '');
      }
    } else {
      closeDesktop();
      show('board');
      await loadBoard();
    }
  } catch (error) {
    report(error);
  }
}
window.addEventListener('hashchange', route);
route();
