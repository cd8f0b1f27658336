// A JsSIP user agent in Node for sipleg's WebSocket interop tests
// (tests/test_interop_jssip.py). Its one argument is a JSON object:
//   url       ws:// or wss:// URL of the proxy (wss trusts NODE_EXTRA_CA_CERTS)
//   uri       the AOR, e.g. sip:alice@example.test
//   message   optional {to, body}: send one MESSAGE once registered
// It registers, answers every incoming MESSAGE (JsSIP: 200) and INVITE
// (session.answer(), signalling only: inactive media), and writes one JSON
// line per event on stdout: registered, registrationFailed, sent,
// sendFailed, message, invite, confirmed, ended, failed. It runs until it
// is terminated (SIGTERM).
'use strict';

const JsSIP = require('jssip');
const NodeWebSocket = require('jssip-node-websocket');

const config = JSON.parse(process.argv[2]);

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

// JsSIP looks for window.RTCPeerConnection when an INVITE arrives. Node has
// no WebRTC: this stand-in does the signalling of an answer whose media is
// inactive (RFC 3264 §6.1), and nothing else.
function inactiveAnswer(offer) {
  const audio = /^m=audio \d+ ([^ ]+) (.*)$/m.exec(offer || '');
  const media = audio ? `m=audio 9 ${audio[1]} ${audio[2].trim()}` : 'm=audio 9 RTP/AVP 0';
  return ['v=0', 'o=- 1 1 IN IP4 127.0.0.1', 's=-', 'c=IN IP4 127.0.0.1', 't=0 0', media, 'a=inactive', ''].join('\r\n');
}

class SignallingOnlyPeerConnection {
  constructor() {
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'new';
    this.signalingState = 'stable';
    this.localDescription = null;
    this.remoteDescription = null;
  }
  addEventListener() {}
  removeEventListener() {}
  addTrack() {}
  getSenders() { return []; }
  getReceivers() { return []; }
  close() { this.signalingState = 'closed'; }
  async setRemoteDescription(description) {
    this.remoteDescription = description;
    this.signalingState = description.type === 'offer' ? 'have-remote-offer' : 'stable';
  }
  async createAnswer() {
    return { type: 'answer', sdp: inactiveAnswer(this.remoteDescription && this.remoteDescription.sdp) };
  }
  async createOffer() {
    return { type: 'offer', sdp: inactiveAnswer(null) };
  }
  async setLocalDescription(description) {
    this.localDescription = description;
    this.signalingState = description.type === 'answer' ? 'stable' : 'have-local-offer';
  }
}

class SessionDescription {
  constructor(init) {
    this.type = init.type;
    this.sdp = init.sdp;
  }
}

global.window = { RTCPeerConnection: SignallingOnlyPeerConnection };
global.RTCPeerConnection = SignallingOnlyPeerConnection;
global.RTCSessionDescription = SessionDescription;

const socket = new NodeWebSocket(config.url);
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: config.uri,
  register: true,
  session_timers: false,
  connection_recovery_min_interval: 60,
  connection_recovery_max_interval: 60,
});

ua.on('registered', () => {
  emit('registered');
  if (config.message) {
    ua.sendMessage(config.message.to, config.message.body, {
      eventHandlers: {
        succeeded: (e) => emit('sent', { code: e.response.status_code }),
        failed: (e) => emit('sendFailed', { cause: e.cause, code: e.response ? e.response.status_code : null }),
      },
    });
  }
});
ua.on('registrationFailed', (e) => emit('registrationFailed', { cause: e.cause }));
ua.on('newMessage', (e) => {
  if (e.originator === 'remote') {
    emit('message', { body: e.request.body, from: e.request.from.uri.toString() });
  }
});
ua.on('newRTCSession', (e) => {
  if (e.originator !== 'remote') {
    return;
  }
  const session = e.session;
  emit('invite', { from: e.request.from.uri.toString() });
  session.on('confirmed', () => emit('confirmed'));
  session.on('ended', (ended) => emit('ended', { originator: ended.originator, cause: ended.cause }));
  session.on('failed', (failed) => emit('failed', { originator: failed.originator, cause: failed.cause }));
  session.answer({ mediaConstraints: { audio: false, video: false } });
});

ua.start();
