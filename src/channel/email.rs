//! Email over SMTP with lettre.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MessageBuilder};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::ChannelSetupError;
use crate::config::{Config, Secrets, Smtp};
use crate::store::SendResult;

pub(super) struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    domain: String,
}

pub(super) fn email_channel(
    cfg: &Config,
    smtp: &Smtp,
    secrets: &Secrets,
) -> Result<EmailChannel, ChannelSetupError> {
    let err = |e: &dyn std::fmt::Display| ChannelSetupError::Smtp(e.to_string());
    let tls_params = || -> Result<TlsParameters, ChannelSetupError> {
        let mut b = TlsParameters::builder(smtp.host.clone());
        if let Some(ca) = &smtp.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ChannelSetupError::Smtp(format!("{}: {e}", ca.display())))?;
            b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| err(&e))?);
        }
        b.build_rustls().map_err(|e| err(&e))
    };
    let tls = match smtp.tls {
        crate::config::Tls::None => Tls::None,
        crate::config::Tls::Starttls => Tls::Required(tls_params()?),
        crate::config::Tls::Implicit => Tls::Wrapper(tls_params()?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)))
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(smtp.pool));
    if let (Some(user), Some(env)) = (&smtp.username, &smtp.password_env)
        && let Some(pw) = secrets.get(env)
    {
        builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_owned()));
    }
    let from: Mailbox = cfg.email_from.parse().map_err(|e| err(&e))?;
    let reply_to = cfg
        .email_reply_to
        .as_ref()
        .and_then(|a| a.as_str().parse().ok());
    let domain = from.email.domain().to_owned();
    Ok(EmailChannel {
        transport: builder.build(),
        from,
        reply_to,
        domain,
    })
}

impl EmailChannel {
    pub(super) async fn send(
        &self,
        message_id: i64,
        to: &str,
        subject: &str,
        text: &str,
    ) -> SendResult {
        let provider = "smtp".to_owned();
        let to: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => {
                return SendResult::Failed {
                    provider,
                    permanent: true,
                    error: format!("bad address: {e}"),
                };
            }
        };
        let mut builder: MessageBuilder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!(
                "<rollcall.{message_id}.{}@{}>",
                hex::encode(rand::random::<[u8; 6]>()),
                self.domain
            )))
            .header(ContentType::TEXT_PLAIN);
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        let email = match builder.body(text.to_owned()) {
            Ok(m) => m,
            Err(e) => {
                return SendResult::Failed {
                    provider,
                    permanent: true,
                    error: e.to_string(),
                };
            }
        };
        match self.transport.send(email).await {
            Ok(resp) => SendResult::Accepted {
                provider,
                provider_ref: resp.message().next().map(str::to_owned),
            },
            Err(e) => SendResult::Failed {
                provider,
                permanent: e.is_permanent(),
                error: e.to_string(),
            },
        }
    }
}
