//! Mail over an SMTP relay (`smtp_url`), for alert emails and ISP ownership codes.
//! Without a relay the controller writes mail to its log (`isp::LogMailer`) and refuses
//! email alert channels, which could not be delivered.

use std::time::Duration;

use lastmile_domain::isp::Mailer;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{Message, SmtpTransport, Transport};

/// Sends each message through one SMTP relay.
pub struct SmtpMailer {
    transport: SmtpTransport,
    from: Mailbox,
}

impl SmtpMailer {
    /// `url`: `smtp://host:25` (plain, for a relay on the same host or network),
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://user:password@host:465`;
    /// `from`: the sender, e.g. `Lastmile <alerts@example.com>`.
    pub fn new(url: &str, from: &str) -> anyhow::Result<SmtpMailer> {
        let transport = SmtpTransport::from_url(url)
            .map_err(|e| anyhow::anyhow!("smtp_url: {e}"))?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("mail_from {from:?}: {e}"))?;
        Ok(SmtpMailer { transport, from })
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let to: Mailbox = to.parse().map_err(|e| format!("address {to:?}: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| e.to_string())?;
        self.transport
            .send(&message)
            .map(|_| ())
            .map_err(|e| lastmile_domain::sites::error_chain(&e))
    }
}
