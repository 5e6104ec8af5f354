//! XMPP: the phones shape against an XMPP server, for the side-by-side
//! comparison with ejabberd (`bench/ejabberd.sh` starts one).
//!
//! Each session is a plain TCP XMPP client stream (RFC 6120): anonymous
//! SASL login (no accounts to make), resource binding, initial presence.
//! Users come in pairs as in chat: a sender sends `<message type='chat'>`
//! stanzas to its partner's full JID on the same open-loop schedule, with
//! a body of the same length carrying its sequence number and time stamp.
//! With `receipts`, every message asks for an XEP-0184 receipt, the partner
//! sends one back at once, and a message is done when its receipt reaches
//! the sender: the same two checkmarks Parley's DELIVERED receipt gives
//! (though Parley's server mints its receipts and acks every frame, where
//! ejabberd only routes a second stanza). Without `receipts` (ejabberd's
//! own benchmark shape) a message is done when it is delivered, and the
//! receipt figures are the delivery's.
//!
//! XMPP has no per-message server ack here: the `ack` figures stay empty.
//!
//! Sessions are read by a task of their own that never has a read
//! cancelled mid-stanza (quick-xml's reader is not cancel safe), except at
//! the end of the run.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::{Ctx, halted};
use crate::addr::connect_from;
use crate::pacing::{Schedule, share};
use crate::stats::Report;
use crate::worker::{Control, ToCoordinator, emit};

/// Body bytes a message carries at least: three 16-digit hex numbers
/// (sequence, due time, written time).
pub const MIN_BODY: usize = 48;
const STREAM_HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream to='localhost' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// The XMPP server's client port (loopback).
    pub addr: SocketAddrV4,
    /// This worker's total rate, msgs/s.
    pub rate: f64,
    pub secs: f64,
    pub body_len: usize,
    pub drain_secs: f64,
    /// Ask for XEP-0184 receipts; a message is done at its receipt.
    pub receipts: bool,
}

impl Params {
    fn total(&self) -> u64 {
        (self.rate * self.secs).round() as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XmppError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("XML: {0}")]
    Xml(#[from] quick_xml::Error),
    #[error("the server closed the stream")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
}

/// One top-level element of the server's stream, with what the run reads
/// of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stanza {
    /// Local name: `message`, `presence`, `iq`, `features`, `success`, …
    pub name: String,
    pub id: String,
    pub from: String,
    /// Text of a `<body>` child.
    pub body: String,
    /// `id` of a `<received xmlns='urn:xmpp:receipts'/>` child.
    pub received: Option<String>,
    /// Text of a `<jid>` (in a bind result).
    pub jid: String,
}

/// Which child's text is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextOf {
    Nothing,
    Body,
    Jid,
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> String {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
        .unwrap_or_default()
}

/// The reading half of a client stream: stanza by stanza.
pub struct StanzaReader<R> {
    reader: Reader<R>,
    buf: Vec<u8>,
    /// Element depth: 1 inside `<stream:stream>`, 2 inside a stanza.
    depth: usize,
}

impl<R: tokio::io::AsyncBufRead + Unpin> StanzaReader<R> {
    pub fn new(inner: R) -> Self {
        let mut reader = Reader::from_reader(inner);
        // The stream header opens an element that a restart (after SASL)
        // opens again without closing.
        reader.config_mut().check_end_names = false;
        Self {
            reader,
            buf: Vec::with_capacity(512),
            depth: 0,
        }
    }

    /// The next complete top-level stanza.
    pub async fn next(&mut self) -> Result<Stanza, XmppError> {
        let mut stanza: Option<Stanza> = None;
        let mut text_of = TextOf::Nothing;
        loop {
            self.buf.clear();
            match self.reader.read_event_into_async(&mut self.buf).await? {
                Event::Start(e) => {
                    if e.local_name().as_ref() == b"stream" {
                        self.depth = 1;
                        continue;
                    }
                    self.depth += 1;
                    match stanza.as_mut() {
                        None if self.depth == 2 => stanza = Some(start(&e)),
                        None => {}
                        Some(s) => text_of = s.child(&e),
                    }
                }
                Event::Empty(e) => match stanza.as_mut() {
                    None if self.depth <= 1 => return Ok(start(&e)),
                    None => {}
                    Some(s) => {
                        s.child(&e);
                    }
                },
                Event::Text(t) => {
                    if let Some(s) = stanza.as_mut() {
                        let text = String::from_utf8_lossy(&t);
                        match text_of {
                            TextOf::Body => s.body.push_str(&text),
                            TextOf::Jid => s.jid.push_str(&text),
                            TextOf::Nothing => {}
                        }
                    }
                }
                Event::End(e) => {
                    if e.local_name().as_ref() == b"stream" {
                        return Err(XmppError::Closed);
                    }
                    text_of = TextOf::Nothing;
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth <= 1
                        && let Some(s) = stanza.take()
                    {
                        return Ok(s);
                    }
                }
                Event::Eof => return Err(XmppError::Closed),
                _ => {}
            }
        }
    }

    /// Reads stanzas until one named `name`; a `failure` fails.
    async fn until(&mut self, name: &str) -> Result<Stanza, XmppError> {
        loop {
            let s = self.next().await?;
            if s.name == name {
                return Ok(s);
            }
            if s.name == "failure" || s.name == "error" {
                return Err(XmppError::Protocol(format!(
                    "the server answered <{}> waiting for <{name}>",
                    s.name
                )));
            }
        }
    }
}

fn start(e: &BytesStart<'_>) -> Stanza {
    Stanza {
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        id: attr(e, b"id"),
        from: attr(e, b"from"),
        ..Stanza::default()
    }
}

impl Stanza {
    /// Notes a child element; says whose text follows.
    fn child(&mut self, e: &BytesStart<'_>) -> TextOf {
        match e.local_name().as_ref() {
            b"body" => TextOf::Body,
            b"jid" => TextOf::Jid,
            b"received" => {
                self.received = Some(attr(e, b"id"));
                TextOf::Nothing
            }
            _ => TextOf::Nothing,
        }
    }
}

/// A logged-in client stream.
pub struct Session {
    pub reader: StanzaReader<BufReader<OwnedReadHalf>>,
    pub writer: OwnedWriteHalf,
    /// The full JID the server bound.
    pub jid: String,
}

impl Session {
    /// Connects from `source`, logs in anonymously, binds a resource and
    /// sends initial presence.
    pub async fn open(source: Ipv4Addr, addr: SocketAddrV4) -> Result<Self, XmppError> {
        let tcp = connect_from(source, addr).await?;
        let (read, mut writer) = tcp.into_split();
        let mut reader = StanzaReader::new(BufReader::with_capacity(4096, read));
        writer.write_all(STREAM_HEADER).await?;
        reader.until("features").await?;
        writer
            .write_all(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
            .await?;
        reader.until("success").await?;
        writer.write_all(STREAM_HEADER).await?;
        reader.until("features").await?;
        writer
            .write_all(
                b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
            )
            .await?;
        let bound = reader.until("iq").await?;
        if bound.jid.is_empty() {
            return Err(XmppError::Protocol("the bind result has no <jid>".into()));
        }
        writer.write_all(b"<presence/>").await?;
        Ok(Self {
            reader,
            writer,
            jid: bound.jid,
        })
    }

    async fn close(mut self) {
        let _ = timeout(
            Duration::from_secs(1),
            self.writer.write_all(b"</stream:stream>"),
        )
        .await;
    }
}

/// The body of message `seq` due at `stamp` and written at `written` (ns
/// from the epoch), padded to `len` bytes.
pub fn body(seq: u64, stamp: u64, written: u64, len: usize) -> String {
    let mut b = format!("{seq:016x}{stamp:016x}{written:016x}");
    while b.len() < len {
        b.push('x');
    }
    b
}

/// The sequence number and stamp a body (or a message id) carries.
pub fn read_body(body: &str) -> Option<(u64, u64)> {
    let seq = u64::from_str_radix(body.get(0..16)?, 16).ok()?;
    let stamp = u64::from_str_radix(body.get(16..32)?, 16).ok()?;
    Some((seq, stamp))
}

/// When the send whose body this is was written.
pub fn read_written(body: &str) -> Option<u64> {
    u64::from_str_radix(body.get(32..48)?, 16).ok()
}

async fn open(ctx: &Ctx, i: usize, addr: SocketAddrV4) -> Option<Session> {
    let login = async { Ok((Session::open(ctx.sources.nth(i), addr).await?, 0)) };
    ctx.logged_in("XMPP login failed", login, XmppError::Timeout)
        .await
}

pub async fn run(
    ctx: &Arc<Ctx>,
    sessions: usize,
    mut ctl: Control,
    p: Params,
) -> anyhow::Result<Report> {
    let pairs = sessions / 2;
    anyhow::ensure!(pairs > 0, "xmpp needs at least one pair of sessions");
    let mut set = JoinSet::new();
    for i in 0..pairs * 2 {
        let ctx = Arc::clone(ctx);
        set.spawn(async move { (i, open(&ctx, i, p.addr).await) });
    }
    let mut conns: Vec<Option<Session>> = (0..pairs * 2).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, s)) = joined {
            conns[i] = s;
        }
    }
    emit(&ToCoordinator::Ready {
        counters: ctx.rec().report.counters.clone(),
    })?;
    let Some(start) = ctl.wait_go().await else {
        return Ok(ctx.take_report());
    };
    ctx.rec().start = start.into_std();
    let deadline = start + Duration::from_secs_f64(p.secs + p.drain_secs);
    let (halt_tx, halt) = watch::channel(false);
    let mut senders = JoinSet::new();
    let mut recipients = JoinSet::new();
    let mut conns = conns.into_iter();
    for pair in 0..pairs {
        let (Some(sender), Some(recipient)) = (conns.next().flatten(), conns.next().flatten())
        else {
            continue;
        };
        let to = recipient.jid.clone();
        let schedule =
            Schedule::for_sender(start, p.rate, pairs, pair, share(p.total(), pairs, pair));
        let expected = schedule.count();
        recipients.spawn(recipient_loop(
            Arc::clone(ctx),
            recipient,
            halt.clone(),
            p,
            expected,
        ));
        senders.spawn(sender_loop(
            Arc::clone(ctx),
            sender,
            to,
            schedule,
            p,
            deadline,
        ));
    }
    while senders.join_next().await.is_some() {}
    if !p.receipts {
        // Done at delivery: the recipients end when they have every
        // message, or at the deadline.
        let _ = timeout_at(deadline, async {
            while recipients.join_next().await.is_some() {}
        })
        .await;
    }
    let _ = halt_tx.send(true);
    let _ = timeout(Duration::from_secs(10), async {
        while recipients.join_next().await.is_some() {}
    })
    .await;
    Ok(ctx.take_report())
}

async fn sender_loop(
    ctx: Arc<Ctx>,
    session: Session,
    to: String,
    schedule: Schedule,
    p: Params,
    deadline: Instant,
) {
    let Session {
        mut reader,
        mut writer,
        jid,
    } = session;
    let count = schedule.count();
    let request = if p.receipts {
        "<request xmlns='urn:xmpp:receipts'/>"
    } else {
        ""
    };
    let send = async {
        let mut next = 0;
        while next < count {
            let intended = schedule.intended(next);
            if intended > deadline {
                break;
            }
            sleep_until(intended).await;
            let seq = next + 1;
            let stamp = ctx.stamp(intended);
            let msg = format!(
                "<message to='{to}' type='chat' id='{seq:016x}{stamp:016x}'><body>{}</body>{request}</message>",
                body(seq, stamp, ctx.stamp(Instant::now()), p.body_len)
            );
            writer.write_all(msg.as_bytes()).await?;
            next += 1;
            let mut rec = ctx.rec();
            rec.report.counters.sent += 1;
            rec.report
                .hists
                .lag
                .record(Instant::now().saturating_duration_since(intended));
            rec.second(intended.into_std()).sent += 1;
        }
        Ok::<u64, XmppError>(next)
    };
    // With receipts, the sender reads them until every one is in.
    let receive = async {
        if !p.receipts {
            return Ok(0);
        }
        let mut last_seq = 0;
        let mut got = 0;
        while got < count {
            let s = reader.next().await?;
            let Some(id) = s.received else { continue };
            let now = Instant::now();
            let Some((seq, stamp)) = read_body(&id) else {
                continue;
            };
            let mut rec = ctx.rec();
            if seq <= last_seq {
                rec.report.counters.receipt_duplicates += 1;
                continue;
            }
            last_seq = seq;
            got += 1;
            rec.receipt(
                now.into_std(),
                now.saturating_duration_since(ctx.unstamp(stamp)),
            );
        }
        Ok::<u64, XmppError>(got)
    };
    let (sent, received) = tokio::join!(send, timeout_at(deadline, receive));
    let sent = match sent {
        Ok(n) => n,
        Err(e) => {
            ctx.rec().report.counters.closed += 1;
            ctx.report_error(&format!("sender {jid} ended"), &e);
            0
        }
    };
    let receipts = match received {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            ctx.rec().report.counters.closed += 1;
            ctx.report_error(&format!("sender {jid} ended"), &e);
            0
        }
        Err(_) => 0,
    };
    {
        let c = &mut ctx.rec().report.counters;
        c.unsent += count - sent.min(count);
        if p.receipts {
            c.unreceipted += sent.saturating_sub(receipts);
        }
    }
    Session {
        reader,
        writer,
        jid,
    }
    .close()
    .await;
}

/// A recipient: records every delivery (order and duplicates by the
/// sequence number in the body) and, with receipts, sends one back at once.
/// Runs until halted or, without receipts, until message `expected` came.
async fn recipient_loop(
    ctx: Arc<Ctx>,
    mut session: Session,
    mut halt: watch::Receiver<bool>,
    p: Params,
    expected: u64,
) {
    let mut last_seq = 0;
    let result: Result<(), XmppError> = async {
        loop {
            if !p.receipts && last_seq >= expected {
                return Ok(());
            }
            let s = tokio::select! {
                s = session.reader.next() => s?,
                () = halted(&mut halt) => return Ok(()),
            };
            if s.name != "message" || s.body.is_empty() {
                continue;
            }
            let now = Instant::now();
            let Some((seq, stamp)) = read_body(&s.body) else {
                continue;
            };
            if p.receipts {
                let receipt = format!(
                    "<message to='{}' id='r{seq:x}'><received xmlns='urn:xmpp:receipts' id='{}'/></message>",
                    s.from, s.id
                );
                session.writer.write_all(receipt.as_bytes()).await?;
            }
            let mut rec = ctx.rec();
            if seq <= last_seq {
                rec.report.counters.duplicates += 1;
                continue;
            }
            if last_seq != 0 && seq != last_seq + 1 {
                rec.report.counters.gaps += 1;
            }
            last_seq = seq;
            let latency = now.saturating_duration_since(ctx.unstamp(stamp));
            rec.report.counters.delivered += 1;
            rec.report.hists.deliver.record(latency);
            if let Some(written) = read_written(&s.body) {
                let server = now.saturating_duration_since(ctx.unstamp(written));
                rec.report.hists.deliver_from_write.record(server);
            }
            rec.second(now.into_std()).delivered += 1;
            if !p.receipts {
                // Done at delivery: the receipt figures are the delivery's.
                rec.receipt(now.into_std(), latency);
            }
        }
    }
    .await;
    if let Err(e) = result {
        ctx.rec().report.counters.closed += 1;
        ctx.report_error("XMPP recipient ended", &e);
    }
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ejabberd 23.01 sent a client (captured on loopback), in one
    /// piece or cut anywhere, reads as the same stanzas.
    const SERVER: &str = "<?xml version='1.0'?><stream:stream id='1' version='1.0' xml:lang='en' \
        xmlns:stream='http://etherx.jabber.org/streams' from='localhost' xmlns='jabber:client'>\
        <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>ANONYMOUS</mechanism></mechanisms></stream:features>\
        <success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>\
        <?xml version='1.0'?><stream:stream id='2' version='1.0' xml:lang='en' \
        xmlns:stream='http://etherx.jabber.org/streams' from='localhost' xmlns='jabber:client'>\
        <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><sm xmlns='urn:xmpp:sm:3'/></stream:features>\
        <iq type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u1@localhost/r1</jid></bind></iq>\
        <presence xml:lang='en' to='u1@localhost/r1' from='u1@localhost/r1'/>\
        <message xml:lang='en' to='u1@localhost/r1' from='u2@localhost/r2' type='chat' id='m1'>\
        <request xmlns='urn:xmpp:receipts'/><body>00000000000000070000000000000009xxxx</body></message>\
        <message to='u1@localhost/r1' from='u2@localhost/r2' id='r7'><received xmlns='urn:xmpp:receipts' id='m1'/></message>\
        </stream:stream>";

    async fn stanzas(chunks: Vec<Vec<u8>>) -> (Vec<Stanza>, XmppError) {
        let (mut w, r) = tokio::io::duplex(64);
        let feed = tokio::spawn(async move {
            for c in chunks {
                w.write_all(&c).await.expect("write");
            }
        });
        let mut reader = StanzaReader::new(BufReader::new(r));
        let mut out = Vec::new();
        let end = loop {
            match reader.next().await {
                Ok(s) => out.push(s),
                Err(e) => break e,
            }
        };
        feed.await.expect("feed");
        (out, end)
    }

    fn check(got: &[Stanza]) {
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "features", "success", "features", "iq", "presence", "message", "message"
            ]
        );
        assert_eq!(got[3].jid, "u1@localhost/r1");
        assert_eq!(got[5].from, "u2@localhost/r2");
        assert_eq!(got[5].id, "m1");
        assert_eq!(read_body(&got[5].body), Some((7, 9)));
        assert_eq!(got[5].received, None);
        assert_eq!(got[6].received.as_deref(), Some("m1"));
        assert!(got[6].body.is_empty());
    }

    #[tokio::test]
    async fn a_stream_reads_as_its_stanzas_however_it_is_cut() {
        let bytes = SERVER.as_bytes();
        let (got, end) = stanzas(vec![bytes.to_vec()]).await;
        check(&got);
        assert!(matches!(end, XmppError::Closed), "{end}");
        for size in [1, 3, 7, 64, 200] {
            let (got, end) = stanzas(bytes.chunks(size).map(<[u8]>::to_vec).collect()).await;
            check(&got);
            assert!(matches!(end, XmppError::Closed), "{size}: {end}");
        }
    }

    #[tokio::test]
    async fn a_cut_stream_ends_in_an_error_not_a_stanza() {
        let at = SERVER.find("<message").expect("message");
        // Cut between stanzas: the stream is closed.
        let (got, end) = stanzas(vec![SERVER.as_bytes()[..at].to_vec()]).await;
        assert_eq!(got.len(), 5);
        assert!(matches!(end, XmppError::Closed), "{end}");
        // Cut inside a stanza's start tag or its body: no half stanza.
        for cut in [at + 20, at + 150] {
            let (got, end) = stanzas(vec![SERVER.as_bytes()[..cut].to_vec()]).await;
            assert_eq!(got.len(), 5, "cut at {cut}");
            assert!(
                matches!(end, XmppError::Closed | XmppError::Xml(_)),
                "{cut}: {end}"
            );
        }
    }

    #[test]
    fn a_body_carries_its_sequence_and_stamp_at_its_length() {
        let b = body(42, 1_234_567_890, 1_234_567_999, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(read_body(&b), Some((42, 1_234_567_890)));
        assert_eq!(read_written(&b), Some(1_234_567_999));
        assert_eq!(body(1, 2, 3, 10).len(), MIN_BODY);
        assert_eq!(read_body("not hex at all, not at all, nope"), None);
        assert_eq!(read_body("short"), None);
    }
}
