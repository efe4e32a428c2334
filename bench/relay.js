// The peer parlor-bench compares Parlor with: the `ws` package README's
// "Server broadcast" example (a client broadcasting to every other client,
// excluding itself), unchanged, started once per room so the relay carries
// the same fan-out as Parlor's rooms. It stores nothing.
//
//   node relay.js [--rooms R]
//
// Listens on 127.0.0.1, ports chosen by the system, and prints one line
// {"ports":[...]} (room i on ports[i]) once every server is listening.
import WebSocket, { WebSocketServer } from 'ws';

const args = process.argv.slice(2);
const at = args.indexOf('--rooms');
const rooms = at >= 0 ? Number(args[at + 1]) : 1;
if (!Number.isInteger(rooms) || rooms < 1) {
  console.error('relay.js: --rooms must be a positive whole number');
  process.exit(2);
}

function broadcastServer() {
  // From here to the end of the function: the README example, verbatim but
  // for the listening address.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });

  wss.on('connection', function connection(ws) {
    ws.on('error', console.error);

    ws.on('message', function message(data, isBinary) {
      wss.clients.forEach(function each(client) {
        if (client !== ws && client.readyState === WebSocket.OPEN) {
          client.send(data, { binary: isBinary });
        }
      });
    });
  });
  return wss;
}

const servers = Array.from({ length: rooms }, broadcastServer);
Promise.all(
  servers.map((wss) => new Promise((resolve) => wss.on('listening', resolve))),
).then(() => {
  const ports = servers.map((wss) => wss.address().port);
  console.log(JSON.stringify({ ports }));
});
