// Twelve sequential GETs with `Connection: close` through a keep-alive agent, as clef's own
// end-to-end suite sends them: a server that closes without saying so makes Node reuse the
// closed socket (ECONNRESET). Usage: node node_keep_alive_close.js <port> <token>
const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const [port, token] = [Number(process.argv[2]), process.argv[3]];
const get = () => new Promise((resolve, reject) => {
  const req = http.get({ host: '127.0.0.1', port, path: '/v1/secrets', agent,
    headers: { Authorization: `Bearer ${token}`, Connection: 'close' } }, (res) => {
    let length = 0;
    res.on('data', (chunk) => { length += chunk.length; });
    res.on('end', () => resolve({ status: res.statusCode, connection: res.headers.connection, length }));
  });
  req.on('error', reject);
  req.setTimeout(5000, () => req.destroy(new Error('no answer within 5 s')));
});
(async () => {
  for (let i = 1; i <= 12; i++) console.log(JSON.stringify({ request: i, ...(await get()) }));
})().catch((error) => { console.log(`FAILED: ${error.code || ''} ${error.message}`); process.exit(1); });
