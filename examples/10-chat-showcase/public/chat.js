// The showcase's browser side: one WebSocket for the room, one EventSource
// for the activity feed of every room.
'use strict';
const $ = (id) => document.getElementById(id);
let ws;

function add(list, kind, parts) {
  const item = document.createElement('li');
  item.className = kind;
  for (const p of parts) item.append(p);
  $(list).prepend(item);
  while ($(list).children.length > 200) $(list).lastChild.remove();
}
function bold(text) { const b = document.createElement('b'); b.textContent = text; return b; }
function time() { return new Date().toLocaleTimeString() + ' '; }

// join(name, room) is also what a test calls.
window.join = function (name, room) {
  if (ws) ws.close();
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host
    + '/ws/' + encodeURIComponent(room) + '?name=' + encodeURIComponent(name);
  ws = new WebSocket(url);
  $('room-name').textContent = room;
  $('log').replaceChildren();
  ws.onopen = () => { $('status').textContent = 'connected to ' + room + ' as ' + name; };
  ws.onclose = (e) => { $('status').textContent = 'disconnected' + (e.reason ? ': ' + e.reason : ''); };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if ('members' in m) $('members').textContent = m.members;
    if (m.type === 'join') add('log', 'join', [time(), m.name + ' joined']);
    if (m.type === 'leave') add('log', 'leave', [time(), m.name + ' left']);
    if (m.type === 'message') add('log', 'message', [time(), bold(m.name), m.text]);
  };
};
window.say = function (text) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(text); };

function showRooms(rooms) {
  $('rooms').replaceChildren();
  for (const [room, n] of Object.entries(rooms).sort()) {
    const a = document.createElement('a');
    a.href = '#';
    a.textContent = room;
    a.onclick = (e) => { e.preventDefault(); $('room').value = room; if ($('name').value) join($('name').value, room); };
    add('rooms', 'room', [a, ' (' + n + ')']);
  }
}

const rooms = {};
const feed = new EventSource('/activity');
feed.addEventListener('rooms', (e) => { Object.assign(rooms, JSON.parse(e.data).rooms); showRooms(rooms); });
for (const kind of ['join', 'leave', 'message']) {
  feed.addEventListener(kind, (e) => {
    const a = JSON.parse(e.data);
    rooms[a.room] = a.members;
    if (!a.members) delete rooms[a.room];
    showRooms(rooms);
    const what = { join: 'joined', leave: 'left', message: 'posted in' }[kind];
    add('activity', kind, [time(), a.name + ' ' + what + ' ' + a.room]);
  });
}

$('join').onsubmit = (e) => { e.preventDefault(); join($('name').value, $('room').value); };
$('say').onsubmit = (e) => { e.preventDefault(); say($('text').value); $('text').value = ''; };
