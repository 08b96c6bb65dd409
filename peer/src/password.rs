//! Reading passwords: from the terminal without echo, or for scripts from stdin or the environment.

use anyhow::{Result, bail};
use std::io::{BufRead, IsTerminal};

/// Where passwords come from, decided once per command.
pub(crate) struct Source {
    stdin_lines: Option<Vec<String>>,
    next: usize,
}

impl Source {
    /// `--password-stdin` reads all lines of stdin up front (one password per line).
    pub(crate) fn new(password_stdin: bool) -> Result<Self> {
        let stdin_lines =
            if password_stdin { Some(std::io::stdin().lock().lines().collect::<Result<Vec<_>, _>>()?) } else { None };
        Ok(Self { stdin_lines, next: 0 })
    }

    /// The next password: stdin line, else `env_var`, else a terminal prompt (asked twice when `confirm`).
    pub(crate) fn read(&mut self, prompt: &str, env_var: &str, confirm: bool) -> Result<String> {
        if let Some(lines) = &self.stdin_lines {
            let Some(line) = lines.get(self.next) else {
                bail!("--password-stdin: expected another line on stdin for: {prompt}")
            };
            self.next += 1;
            return Ok(line.trim_end_matches('\r').to_string());
        }
        if let Ok(pw) = std::env::var(env_var) {
            return Ok(pw);
        }
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for the password: pass --password-stdin, or set {env_var}");
        }
        let pw = rpassword::prompt_password(format!("{prompt}: "))?;
        if confirm && rpassword::prompt_password("again, to confirm: ")? != pw {
            bail!("the two passwords differ; nothing was changed");
        }
        Ok(pw)
    }
}
