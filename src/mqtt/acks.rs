//! The gateway's MQTT acknowledgements, sent in the order the messages came.
//!
//! MQTT 3.1.1 [MQTT-4.6.0-2]: a client sends its PUBACKs in the order it received the PUBLISH
//! packets. The gateway acknowledges a message once it is handled, and an upstream trigger only
//! once its remote call's outcome is recorded (`app::upstream`): without this module, whatever
//! came after a trigger (a door scan, the gateway's own commands back through its subscription
//! to `<prefix>/readers/#`) was acknowledged ahead of it. rumqttd, the embedded broker, takes
//! acknowledgements in order only: it dropped the gateway's connection on the first one out of
//! order ("out of order ack"), then again on each held acknowledgement sent on the next
//! connection (rumqttd numbers its deliveries afresh per connection: unsolicited there) and on
//! the redelivered backlog acknowledged around the mark. The gateway was cut off from every
//! reader for a growing backoff, and commands stopped reaching readers.
//!
//! Here every QoS 1 message the poller receives gets a [`Ticket`]: its connection and its place.
//! The one task that sends acknowledgements ([`run`]) sends a message's only once every earlier
//! message of that connection is acknowledged, and never one of an earlier connection (the
//! broker delivers those again on a resumed session; the poller drops any already queued, see
//! `client::spawn`). A message whose acknowledgement is held (an upstream trigger) holds back
//! the ones behind it, but never more than [`HELD_WINDOW`] in all: then it is acknowledged at
//! once (logged), as a trigger beyond `HELD_ACKS` already is, so that a remote that hangs does
//! not fill the broker's in-flight window for this client (Mosquitto's default is 20) and stop
//! every reader until its timeout.
//!
//! Nobody who handles a message waits for the request channel of the MQTT client: the task
//! polling the event loop (which drains that channel) waits for the inbound queue, the inbound
//! task only for the app, and acknowledgements reach this task through an unbounded channel.

use rumqttc::{AsyncClient, Publish, QoS};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The most messages left unacknowledged behind (and with) a held acknowledgement: one more, and
/// the held one at the head is acknowledged at once.
pub const HELD_WINDOW: usize = 8;

/// A received QoS 1 message's place in the acknowledgement order: the connection it came on
/// (counted by the poller) and its rank there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    link: u64,
    seq: u64,
}

#[derive(Debug)]
enum Note {
    /// Received, with its packet id; to acknowledge once done.
    Received(Ticket, u16),
    /// Its acknowledgement waits for something else (an upstream trigger's outcome).
    Held(Ticket),
    /// Handled: may be acknowledged once every earlier message is.
    Done(Ticket),
}

/// The handle the MQTT tasks note receptions and completions through.
#[derive(Clone)]
pub struct Acks {
    tx: mpsc::UnboundedSender<Note>,
    /// The connection now (the poller counts them): locked while an acknowledgement is queued,
    /// so none of an earlier connection is queued once the poller has counted a new one.
    link: Arc<Mutex<u64>>,
}

/// The poller's side: tickets for the messages of the current connection.
pub struct Receipts {
    acks: Acks,
    link: u64,
    seq: u64,
}

impl Receipts {
    /// A message received on the current connection: its ticket (`None` for QoS 0, which is
    /// not acknowledged).
    pub fn received(&mut self, p: &Publish) -> Option<Ticket> {
        if p.qos != QoS::AtLeastOnce {
            return None;
        }
        self.seq += 1;
        let t = Ticket {
            link: self.link,
            seq: self.seq,
        };
        let _ = self.acks.tx.send(Note::Received(t, p.pkid));
        Some(t)
    }

    /// The connection is lost. No acknowledgement of its messages is queued after this returns
    /// (the caller drops the ones queued already: `EventLoop::clean`).
    pub fn lost(&mut self) {
        let mut link = self.acks.link.lock().unwrap_or_else(|e| e.into_inner());
        *link += 1;
        self.link = *link;
        self.seq = 0;
    }

    pub fn acks(&self) -> &Acks {
        &self.acks
    }
}

impl Acks {
    /// `t`'s message is handled.
    pub fn done(&self, t: Option<Ticket>) {
        if let Some(t) = t {
            let _ = self.tx.send(Note::Done(t));
        }
    }

    /// `t`'s acknowledgement waits: [`Acks::done`] follows.
    pub fn held(&self, t: Option<Ticket>) {
        if let Some(t) = t {
            let _ = self.tx.send(Note::Held(t));
        }
    }
}

/// The handles and the task that sends acknowledgements through `client` until aborted.
pub fn start(client: AsyncClient) -> (Receipts, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Arc::new(Mutex::new(0));
    let acks = Acks {
        tx,
        link: link.clone(),
    };
    let receipts = Receipts {
        acks,
        link: 0,
        seq: 0,
    };
    (receipts, run(client, rx, link))
}

async fn run(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<Note>, link: Arc<Mutex<u64>>) {
    let mut order = Order::default();
    while let Some(n) = rx.recv().await {
        order.note(n);
        loop {
            while let Ok(n) = rx.try_recv() {
                order.note(n);
            }
            match send_next(&client, &mut order, &link) {
                Sent::One => {}
                Sent::Nothing => break,
                // The client's request channel is full: the poller drains it.
                Sent::Full => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
}

enum Sent {
    One,
    Nothing,
    Full,
}

fn send_next(client: &AsyncClient, order: &mut Order, link: &Mutex<u64>) -> Sent {
    let link = link.lock().unwrap_or_else(|e| e.into_inner());
    let Some((pkid, early)) = order.next(*link) else {
        return Sent::Nothing;
    };
    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
    p.pkid = pkid;
    if client.try_ack(&p).is_err() {
        return Sent::Full;
    }
    drop(link);
    order.pop();
    if early {
        tracing::warn!(
            waiting = HELD_WINDOW,
            "a trigger's MQTT message acknowledged before its outcome was recorded: \
             {HELD_WINDOW} messages waited behind it (a crash now would not bring it back)"
        );
    }
    Sent::One
}

struct Entry {
    ticket: Ticket,
    pkid: u16,
    done: bool,
    held: bool,
}

/// The messages not acknowledged yet, in the order they came.
#[derive(Default)]
struct Order {
    entries: VecDeque<Entry>,
}

impl Order {
    fn note(&mut self, n: Note) {
        match n {
            Note::Received(ticket, pkid) => {
                // A message of a newer connection: the older ones are delivered again.
                self.entries.retain(|e| e.ticket.link >= ticket.link);
                self.entries.push_back(Entry {
                    ticket,
                    pkid,
                    done: false,
                    held: false,
                });
            }
            Note::Held(t) => {
                if let Some(e) = self.find(t) {
                    e.held = true;
                }
            }
            Note::Done(t) => {
                if let Some(e) = self.find(t) {
                    e.done = true;
                }
            }
        }
    }

    fn find(&mut self, t: Ticket) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.ticket == t)
    }

    /// The packet id to acknowledge next on connection `link`, if any, and whether it is a held
    /// one acknowledged early. Messages of other connections are dropped.
    fn next(&mut self, link: u64) -> Option<(u16, bool)> {
        self.entries.retain(|e| e.ticket.link == link);
        let head = self.entries.front()?;
        if head.done {
            Some((head.pkid, false))
        } else if head.held && self.entries.len() > HELD_WINDOW {
            Some((head.pkid, true))
        } else {
            None
        }
    }

    fn pop(&mut self) {
        self.entries.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(link: u64, seq: u64) -> Ticket {
        Ticket { link, seq }
    }

    fn drain(o: &mut Order, link: u64) -> Vec<(u16, bool)> {
        let mut out = vec![];
        while let Some(x) = o.next(link) {
            out.push(x);
            o.pop();
        }
        out
    }

    #[test]
    fn acknowledgements_follow_the_order_of_reception() {
        let mut o = Order::default();
        for (seq, pkid) in [(1, 7), (2, 8), (3, 9)] {
            o.note(Note::Received(t(0, seq), pkid));
        }
        o.note(Note::Done(t(0, 2)));
        o.note(Note::Done(t(0, 3)));
        assert_eq!(drain(&mut o, 0), [], "the first one is not done");
        o.note(Note::Done(t(0, 1)));
        assert_eq!(drain(&mut o, 0), [(7, false), (8, false), (9, false)]);
    }

    #[test]
    fn a_held_one_holds_back_those_behind_it_up_to_the_window() {
        let mut o = Order::default();
        o.note(Note::Received(t(0, 1), 1));
        o.note(Note::Held(t(0, 1)));
        for seq in 2..=HELD_WINDOW as u64 {
            o.note(Note::Received(t(0, seq), seq as u16));
            o.note(Note::Done(t(0, seq)));
        }
        assert_eq!(drain(&mut o, 0), [], "{HELD_WINDOW} waiting");
        let next = HELD_WINDOW as u64 + 1;
        o.note(Note::Received(t(0, next), next as u16));
        o.note(Note::Done(t(0, next)));
        let sent = drain(&mut o, 0);
        assert_eq!(sent[0], (1, true), "the held one, early");
        assert_eq!(sent.len(), HELD_WINDOW + 1);
        assert!(sent[1..].iter().all(|(_, early)| !early));
        // Its outcome afterwards changes nothing.
        o.note(Note::Done(t(0, 1)));
        assert_eq!(drain(&mut o, 0), []);
    }

    #[test]
    fn nothing_of_an_earlier_connection_is_acknowledged() {
        let mut o = Order::default();
        o.note(Note::Received(t(0, 1), 1));
        o.note(Note::Received(t(0, 2), 2));
        o.note(Note::Done(t(0, 2)));
        // Lost before the first was done: its completion comes too late.
        o.note(Note::Done(t(0, 1)));
        assert_eq!(drain(&mut o, 1), []);
        o.note(Note::Received(t(1, 1), 1));
        o.note(Note::Done(t(0, 1)));
        assert_eq!(drain(&mut o, 1), []);
        o.note(Note::Done(t(1, 1)));
        assert_eq!(drain(&mut o, 1), [(1, false)]);
        // A newer connection's message drops an older one's still waiting.
        o.note(Note::Received(t(1, 2), 2));
        o.note(Note::Received(t(2, 1), 5));
        o.note(Note::Done(t(2, 1)));
        assert_eq!(drain(&mut o, 2), [(5, false)]);
    }
}
