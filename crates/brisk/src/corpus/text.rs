//! Reading raw text: files, directories and `.gz`, split into documents.
//!
//! Format: UTF-8, one paragraph or sentence per line, a blank line between
//! documents. Windows line endings are accepted (`\r` is whitespace to the
//! tokenizer). Errors name the file and, for bad UTF-8, the byte offset.

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// The text of one input file (decompressed when it was `.gz`).
#[derive(Debug, Clone)]
pub struct TextSource {
    /// The file it came from, or a label such as `<generated>`.
    pub path: PathBuf,
    pub text: String,
}

impl TextSource {
    /// The documents of this source: runs of non-blank lines.
    pub fn documents(&self) -> impl Iterator<Item = &str> + '_ {
        documents(&self.text)
    }
}

/// The documents of a text: runs of non-blank lines.
pub fn documents(text: &str) -> impl Iterator<Item = &str> + '_ {
    Documents { text, pos: 0 }
}

/// Iterator over blank-line-separated documents, as slices of the text
/// (lines inside a document keep their line breaks).
struct Documents<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Documents<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let mut start = None;
        let mut end = self.pos;
        while self.pos < self.text.len() {
            let rest = &self.text[self.pos..];
            let line_len = rest.find('\n').map_or(rest.len(), |i| i + 1);
            let line = &rest[..line_len];
            let blank = line.trim().is_empty();
            if blank && start.is_some() {
                self.pos += line_len;
                break;
            }
            if !blank {
                start.get_or_insert(self.pos);
                end = self.pos + line_len;
            }
            self.pos += line_len;
        }
        start.map(|s| &self.text[s..end])
    }
}

/// Expands files and directories into the sorted list of files to read.
/// Directories are walked recursively; hidden entries are skipped.
pub fn list_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::Usage("no input given".into()));
    }
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::data(path, format!("cannot read input: {e}")))?;
        if meta.is_dir() {
            let before = files.len();
            walk_dir(path, &mut files)?;
            if files.len() == before {
                return Err(Error::data(path, "directory contains no files"));
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk_dir(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk_dir(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads and checks every file in parallel, in input order.
pub fn read_all(files: &[PathBuf]) -> Result<Vec<TextSource>> {
    files.par_iter().map(|path| read_text(path)).collect()
}

/// Reads one file: decompresses `.gz`, checks UTF-8 and that it has text.
pub fn read_text(path: &Path) -> Result<TextSource> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let bytes = if gz {
        let mut out = Vec::with_capacity(raw.len() * 3);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("not a readable gzip file: {e}")))?;
        out
    } else {
        raw
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let whose = if gz { " of the decompressed text" } else { "" };
        Error::data(
            path,
            format!("invalid UTF-8 at byte offset {offset}{whose}"),
        )
    })?;
    let text = crate::run::strip_bom(text);
    if text.trim().is_empty() {
        return Err(Error::data(path, "file is empty (no text to read)"));
    }
    Ok(TextSource {
        path: path.to_path_buf(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Vec<String> {
        let source = TextSource {
            path: "t".into(),
            text: text.into(),
        };
        source.documents().map(str::to_string).collect()
    }

    #[test]
    fn documents_split_on_blank_lines() {
        assert_eq!(docs("a\nb\n\nc\n"), vec!["a\nb\n", "c\n"]);
        assert_eq!(docs("\n\n a \n  \n\n\nb"), vec![" a \n", "b"]);
        assert_eq!(docs("a\r\nb\r\n\r\nc\r\n"), vec!["a\r\nb\r\n", "c\r\n"]);
        assert!(docs("\n \n").is_empty());
    }
}
