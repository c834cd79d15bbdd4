// MQTT.js against a real gateway: a browser dashboard over WebSocket, a device over TCP.
// Run by tests/broker/test_mqttjs.py: node mqttjs_interop.js WS_URL TCP_URL USER PASSWORD.
// Prints one JSON line per check ({"check", "ok", "detail"}) and "done" at the end.
'use strict';
const mqtt = require('mqtt');

const [wsUrl, tcpUrl, user, password] = process.argv.slice(2);
// A page opened from a file sends the origin "null"; the node client sends none otherwise.
const BROWSER = { wsOptions: { headers: { Origin: 'null' } } };

function report(check, ok, detail) {
  console.log(JSON.stringify({ check, ok: Boolean(ok), detail: detail === undefined ? null : detail }));
}

// Connects; resolves with [client, connack], rejects with the library's error.
function connect(url, options) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
    client.once('connect', (connack) => resolve([client, connack]));
    client.once('error', (error) => { client.end(true); reject(error); });
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

// The next message on `topic` (registered before whatever makes it arrive).
function next(client, topic, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message on ${topic} within ${ms} ms`)), ms);
    client.on('message', function handler(got, payload, packet) {
      if (got === topic) {
        clearTimeout(timer);
        client.removeListener('message', handler);
        resolve(packet);
      }
    });
  });
}

async function refusedWith(url, options) {
  try {
    const [client] = await connect(url, options);
    client.end(true);
    return { code: 0, message: 'accepted' };
  } catch (error) {
    return { code: error.code, message: error.message };
  }
}

async function main() {
  const [dashboard, ack] = await connect(wsUrl, { ...BROWSER, clientId: 'js-dashboard' });
  report('ws connect', ack.returnCode === 0, ack.returnCode);
  const [device] = await connect(tcpUrl, { clientId: 'js-device' });

  const granted = await dashboard.subscribeAsync({ 'js/q0': { qos: 0 }, 'js/q1': { qos: 1 }, 'js/q2': { qos: 2 } });
  report('one SUBSCRIBE, three filters', granted.map((g) => g.qos).join() === '0,1,2', granted);
  await device.subscribeAsync('js/cmd/#', { qos: 2 });
  for (const qos of [0, 1, 2]) {
    const up = next(dashboard, `js/q${qos}`);
    await device.publishAsync(`js/q${qos}`, `up${qos}`, { qos });
    const got = await up;
    report(`QoS ${qos} tcp -> ws`, got.payload.toString() === `up${qos}` && got.qos === qos, got.qos);
    const down = next(device, `js/cmd/${qos}`);
    await dashboard.publishAsync(`js/cmd/${qos}`, `down${qos}`, { qos });
    const back = await down;
    report(`QoS ${qos} ws -> tcp`, back.payload.toString() === `down${qos}` && back.qos === qos, back.qos);
  }

  const large = Buffer.alloc(1000000, 0x5a);
  const bigOne = next(dashboard, 'js/q1');
  await device.publishAsync('js/q1', large, { qos: 1 });
  report('1 MB payload', (await bigOne).payload.equals(large));

  await device.publishAsync('js/state', 'open', { qos: 1, retain: true });
  const [late] = await connect(wsUrl, { ...BROWSER, clientId: 'js-late' });
  const kept = next(late, 'js/state');
  await late.subscribeAsync('js/#', { qos: 1 });
  const retained = await kept;
  report('retained', retained.payload.toString() === 'open' && retained.retain, retained.retain);
  await device.publishAsync('js/state', '', { qos: 1, retain: true });
  late.end(true);

  await device.subscribeAsync('js/will', { qos: 1 });
  const [dying] = await connect(wsUrl, { ...BROWSER, clientId: 'js-dying', will: { topic: 'js/will', payload: 'gone', qos: 1 } });
  const will = next(device, 'js/will');
  dying.stream.destroy();
  report('will on a dropped WebSocket', (await will).payload.toString() === 'gone');

  const [beating] = await connect(wsUrl, { ...BROWSER, clientId: 'js-keepalive', keepalive: 1 });
  let pongs = 0;
  beating.on('packetreceive', (packet) => { pongs += packet.cmd === 'pingresp' ? 1 : 0; });
  await new Promise((resolve) => setTimeout(resolve, 3200));
  report('keep-alive pings answered', pongs >= 2 && beating.connected, pongs);
  beating.end(true);

  const [away] = await connect(wsUrl, { ...BROWSER, clientId: 'js-persistent', clean: false });
  await away.subscribeAsync('js/offline', { qos: 1 });
  await away.endAsync();
  await device.publishAsync('js/offline', 'queued', { qos: 1 });
  const back = mqtt.connect(wsUrl, { ...BROWSER, clientId: 'js-persistent', clean: false, reconnectPeriod: 0 });
  const queued = next(back, 'js/offline');
  const resumed = await new Promise((resolve) => back.once('connect', resolve));
  report('persistent session resumed', resumed.sessionPresent === true, resumed.sessionPresent);
  report('queued while offline, delivered', (await queued).payload.toString() === 'queued');
  await back.endAsync();

  const again = mqtt.connect(wsUrl, { ...BROWSER, clientId: 'js-reconnect', reconnectPeriod: 200 });
  await new Promise((resolve) => again.once('connect', resolve));
  await again.subscribeAsync('js/again', { qos: 1 });
  again.stream.destroy();
  await new Promise((resolve) => again.once('connect', resolve));
  await new Promise((resolve) => setTimeout(resolve, 300)); // its SUBSCRIBE again
  const resubscribed = next(again, 'js/again');
  await device.publishAsync('js/again', 'x', { qos: 1 });
  report('reconnect resubscribes', (await resubscribed).payload.toString() === 'x');
  again.end(true);

  const [member, memberAck] = await connect(wsUrl, { ...BROWSER, clientId: 'js-user', username: user, password });
  report('user name and password', memberAck.returnCode === 0, memberAck.returnCode);
  member.end(true);
  const wrong = await refusedWith(wsUrl, { ...BROWSER, clientId: 'js-intruder', username: user, password: 'wrong' });
  report('wrong password: CONNACK 5', wrong.code === 5 && /Not authorized/.test(wrong.message), wrong);
  const v5 = await refusedWith(wsUrl, { ...BROWSER, clientId: 'js-v5', protocolVersion: 5 });
  report('MQTT 5: CONNACK 1', v5.code === 1 && /Unacceptable protocol version/.test(v5.message), v5);

  // A topic over max_topic_levels (200) breaks the broker's rules: the connection is closed.
  const [bad] = await connect(wsUrl, { ...BROWSER, clientId: 'js-bad' });
  const started = Date.now();
  const closed = new Promise((resolve) => bad.once('close', () => resolve(Date.now() - started)));
  bad.publish(`${'a/'.repeat(201)}z`, 'x', { qos: 0 });
  const after = await Promise.race([closed, new Promise((resolve) => setTimeout(() => resolve(null), 5000))]);
  report('a bad PUBLISH closes the WebSocket at once', after !== null, after);
  bad.end(true);

  await dashboard.endAsync();
  await device.endAsync();
  console.log('done');
}

main().then(() => process.exit(0), (error) => {
  report('script', false, String(error && error.stack));
  process.exit(1);
});
