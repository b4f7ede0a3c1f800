// The source notes' Node.js worker, unchanged by Shoal: a hello naming its
// process and a CPU-bound endpoint, on plain `http`. It knows nothing of
// etcd: `autoscaler apply -f examples/node-hello/shoal.yaml` declares it,
// and the platform registers each instance (registration: managed), tells
// it its port in PORT, and drains it before sending SIGTERM.
'use strict';

const http = require('http');

const port = Number(process.env.PORT || 8080);
// 127.0.0.1 unless told otherwise (a container listens on every interface).
const host = process.env.HOST || '127.0.0.1';
const greeting = process.env.GREETING || 'Hello';

// A busy loop, as in the notes: 10^7 iterations by default.
function work(iterations) {
  let x = 0;
  for (let i = 0; i < iterations; i++) {
    x = (x + i * 7) % 1000003;
  }
  return x;
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/work') {
    const iterations = Math.min(Number(url.searchParams.get('iterations') || 1e7), 1e9);
    const result = work(iterations);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`worked ${iterations} iterations in process ${process.pid}: ${result}\n`);
    return;
  }
  if (url.pathname === '/' || url.pathname === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`${greeting} from node process ${process.pid}\n`);
    return;
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found\n');
});

server.keepAliveTimeout = 65000;
server.listen(port, host, () => {
  console.log(`listening on ${host}:${port} (pid ${process.pid})`);
});

// Finish what is in flight, then leave.
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
