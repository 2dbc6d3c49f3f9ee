//! `skywave listen`: connects to a topic as a browser does and prints what
//! arrives (for trying things out).

use std::process::ExitCode;

use super::discovery::{configured_secret, Discovery};
use super::print;

pub fn listen(
    discovery: &Discovery,
    topic: &str,
    url: &str,
    token: Option<String>,
    user: i64,
) -> ExitCode {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let token = match token {
        Some(token) => token,
        None => match configured_secret(discovery) {
            Ok(secret) => skywave::auth::sign_hex_token(
                secret.expose().as_bytes(),
                user,
                topic,
                skywave::auth::unix_now() + 86_400,
            ),
            Err(code) => return code,
        },
    };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", topic)
        .finish();
    let target = format!("{}/ws?{query}", url.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("skywave listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (mut socket, _) = match tokio_tungstenite::connect_async(target.as_str()).await {
            Ok(connected) => connected,
            Err(error) => {
                eprintln!("skywave listen: {target}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let auth = serde_json::json!({ "type": "auth", "token": token }).to_string();
        if let Err(error) = socket.send(Message::text(auth)).await {
            eprintln!("skywave listen: {error}");
            return ExitCode::FAILURE;
        }
        eprintln!("listening on {target} (Ctrl-C to stop)");
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => print(&text),
                Ok(Message::Close(frame)) => {
                    eprintln!("closed: {frame:?}");
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("skywave listen: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ExitCode::SUCCESS
    })
}
