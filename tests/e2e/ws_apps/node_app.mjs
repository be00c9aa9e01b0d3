// A jambonz WebSocket app written with the unmodified @jambonz/sdk (npm), run by the e2e tests
// as a separate process:   node node_app.mjs PORT SPEC_JSON
// SPEC_JSON: {"verbs": {from_user or "*": [verbs]}}. Each session gets its caller's verb list;
// the conference statusHook events (verb:hook notifications, auto-acked by the SDK) and
// call:status are printed as JSON lines; stdin lines {"call_sid", "command", "data"} are sent
// with session.injectCommand(command, data).
import http from 'node:http';
import readline from 'node:readline';
import { createEndpoint } from '@jambonz/sdk/websocket';

const port = Number(process.argv[2]);
const spec = JSON.parse(process.argv[3]);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const sessions = new Map();

const server = http.createServer();
const makeService = createEndpoint({ server, port });
const svc = makeService({ path: '/' });

svc.on('session:new', (session) => {
  sessions.set(session.callSid, session);
  out({ ev: 'session', from: session.from, call_sid: session.callSid });
  session.on('verb:hook', (hook, data) => out({ ev: 'hook', hook, call_sid: session.callSid, data }));
  session.on('call:status', (data) => out({ ev: 'call:status', call_sid: session.callSid,
                                             call_status: data.call_status }));
  session.on('jambonz:error', (data) => out({ ev: 'jambonz:error', data }));
  const verbs = spec.verbs[session.from] ?? spec.verbs['*'] ?? [];
  session.addVerbs(verbs).send();
});

server.on('listening', () => out({ ev: 'ready', port }));
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  sessions.get(cmd.call_sid).injectCommand(cmd.command, cmd.data);
  out({ ev: 'sent', command: cmd.command, call_sid: cmd.call_sid });
});
