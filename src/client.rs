//! A blocking client of the control socket, used by the CLI and the tests.
//!
//! It sends one request line and reads one answer line. It knows the wire
//! format only through [`crate::protocol`].

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path} (is the daemon running? check socket.path)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lost the connection to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection without answering")]
    Closed,
    #[error("the daemon answered something that is not JSON: {0}")]
    NotJson(String),
}

/// One connection to the daemon; requests on it are answered in order.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        // A daemon that stops answering should not hang a script forever.
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns the raw answer line, without its newline.
    pub fn send_line(&mut self, request: &str) -> Result<String, ClientError> {
        let sent = self
            .writer
            .write_all(request.as_bytes())
            .and_then(|()| self.writer.write_all(b"\n"))
            .and_then(|()| self.writer.flush());
        // A daemon that refuses a connection (forbidden, too many
        // connections) answers one line and closes without reading, so the
        // write may fail while that answer is waiting to be read.
        let mut line = String::new();
        match (sent, self.reader.read_line(&mut line)) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(e.into()),
            (Ok(()), Ok(_)) => return Err(ClientError::Closed),
            (Ok(()), Err(e)) => return Err(e.into()),
        }
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
        Ok(line)
    }

    /// Sends `request` and parses the answer.
    pub fn request(&mut self, request: &Value) -> Result<(String, Value), ClientError> {
        let line = self.send_line(&request.to_string())?;
        let value = serde_json::from_str(&line).map_err(|_| ClientError::NotJson(line.clone()))?;
        Ok((line, value))
    }
}
