//! A socket's searches: a page of the messages its person may read that contain what they
//! typed, into the search dialog.

use super::{ActionError, Socket, refuse};
use crate::chat::names::SearchQuery;
use crate::chat::protocol::{Swap, frame};
use crate::layer::Reply;
use crate::store::Searched;
use crate::views::{self, target};

impl Socket {
    pub(super) async fn search(
        &self,
        query: &str,
        before: Option<&str>,
    ) -> Result<(), ActionError> {
        let query = SearchQuery::parse(query)?;
        let results = match self
            .hub
            .store
            .search(&self.user.id, query.as_str(), before)
            .await?
        {
            Searched::Page(results) => results,
            Searched::TooBroad => {
                return refuse(
                    "That search matches too much to look through: add more of the words you remember.",
                );
            }
            Searched::BadCursor => return refuse("\"before\" is not where a search left off."),
            Searched::Busy => {
                return refuse("Searching is busy right now; try again in a moment.");
            }
        };
        self.charge_read(results.found.iter().map(|f| &f.message));
        // A first page replaces what an earlier search found; a next one goes below it.
        let swap = if before.is_some() {
            Swap::BeforeEnd
        } else {
            Swap::Inner
        };
        let found = views::search_results(
            &results.found,
            query.as_str(),
            before.is_none(),
            results.next.is_some(),
        );
        let more = views::search_more(query.as_str(), results.next.as_deref());
        self.send(Reply::Frames(vec![
            frame(target::SEARCH_RESULTS, swap, &found.into_string()),
            frame(target::SEARCH_MORE, Swap::Outer, &more.into_string()),
        ]));
        Ok(())
    }
}
