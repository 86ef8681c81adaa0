//! The records of an export stream: a job with its history, a recurring
//! schedule, and the line that ends the stream.
//!
//! Each record names its fields for what they are, not by the table that
//! holds them today, so that another store can read and write the same
//! stream. Every field that is a column is a [`Cell`], carried as stored.
//! `columns!` declares a record once: the struct, and the list of the
//! columns its fields come from, in field order, which the store reads and
//! writes by. A new column is one more line there (with
//! `#[serde(default)]`, so that older streams still read).

use super::Cell;
use serde::{Deserialize, Serialize};

/// Declares a record whose fields `name <- "column"` are columns (cells),
/// with typed fields before (`lead`) and after (`tail`) them.
macro_rules! columns {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            lead { $( $(#[$lm:meta])* $lead:ident : $lty:ty, )* }
            cells { $( $(#[$cm:meta])* $field:ident <- $column:literal, )* }
            tail { $( $(#[$tm:meta])* $tail:ident : $tty:ty, )* }
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$lm])* pub $lead: $lty, )*
            $( $(#[$cm])* pub $field: Cell, )*
            $( $(#[$tm])* pub $tail: $tty, )*
        }

        impl $name {
            /// The columns of the cell fields, in field order.
            pub const COLUMNS: &'static [&'static str] = &[$($column),*];

            /// The cell fields, in the order of [`Self::COLUMNS`].
            pub fn cells(&self) -> [&Cell; $name::COLUMNS.len()] {
                [$(&self.$field),*]
            }

            /// A record from its typed fields and its cells, in the order
            /// of [`Self::COLUMNS`].
            pub fn from_cells(
                $( $lead: $lty, )*
                cells: [Cell; $name::COLUMNS.len()],
                $( $tail: $tty, )*
            ) -> $name {
                let [$($field),*] = cells;
                $name { $($lead,)* $($field,)* $($tail,)* }
            }
        }
    };
}

columns! {
    /// One job, with every column of its row and its history.
    pub struct Job {
        lead {
            id: i64,
        }
        cells {
            key <- "key",
            kind <- "kind",
            channel <- "channel",
            enquiry_id <- "enquiry_id",
            state <- "state",
            scheduled_at <- "scheduled_at",
            /// When the daemon would next try it, under the source's windows.
            due_at <- "due_at",
            expires_at <- "expires_at",
            timezone <- "timezone",
            window <- "send_window",
            /// The job it follows, by id.
            after <- "parent_id",
            after_delay_ms <- "after_delay_ms",
            after_ttl_ms <- "after_ttl_ms",
            /// Tries counted against `retry.max_attempts`.
            attempts <- "attempts",
            created_at <- "created_at",
            updated_at <- "updated_at",
            last_error <- "last_error",
            /// The final answer, as stored (JSON text).
            result <- "result",
            /// The payload, as stored (JSON text).
            payload <- "payload",
        }
        tail {
            tags: Vec<String>,
            /// The stored tag list, when it is not the canonical form of
            /// `tags` (a hand edit): then it, not `tags`, is stored.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            tags_stored: Option<Cell>,
            history: Vec<Attempt>,
        }
    }
}

columns! {
    /// One try at delivering a job.
    pub struct Attempt {
        lead {}
        cells {
            /// 1-based sequence number of the try.
            attempt <- "seq",
            started_at <- "started_at",
            finished_at <- "finished_at",
            status <- "status",
            error <- "error",
            decision <- "decision",
            ambiguous <- "ambiguous",
            latency_ms <- "latency_ms",
            /// The node that made it; none before schema version 10.
            #[serde(default)]
            node <- "node",
        }
        tail {}
    }
}

columns! {
    /// One recurring schedule.
    pub struct Schedule {
        lead {}
        cells {
            name <- "name",
            cron <- "cron",
            timezone <- "timezone",
            catch_up <- "catch_up",
            /// The job each occurrence creates, as stored (JSON text).
            job <- "job",
            /// Its next occurrence still to create.
            next_at <- "next_at",
            revision <- "revision",
            created_at <- "created_at",
            updated_at <- "updated_at",
        }
        tail {}
    }
}

/// The line that ends a stream, with the counts of what came before it: a
/// stream cut short has none, or counts that disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub jobs: u64,
    pub schedules: u64,
}
