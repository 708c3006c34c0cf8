//! Calls that change instances (`insert`, `bulkInsert`, `delete`, `start`, `stop`,
//! `resume`, `setLabels`): each is answered with an operation, and a call that repeats a
//! `requestId` gets the first call's operation back and changes nothing.

use pm_gce::resources::Operation;

use super::{ApiError, World};

/// A call that changes instances, with what it names besides its project and zone.
#[derive(Debug, Clone, Copy)]
pub enum Mutation<'a> {
    /// `instances.insert` of this instance body.
    Insert(&'a [u8]),
    /// `instances.bulkInsert` of this request body.
    BulkInsert(&'a [u8]),
    /// `instances.delete` of this instance.
    Delete(&'a str),
    /// `instances.start` of this instance.
    Start(&'a str),
    /// `instances.stop` of this instance.
    Stop(&'a str),
    /// `instances.resume` of this instance.
    Resume(&'a str),
    /// `instances.setLabels` of this instance, with this request body.
    SetLabels(&'a str, &'a [u8]),
}

impl World {
    /// Carries out `mutation` in `zone` of `project` and returns its operation; a
    /// `requestId` seen before in that zone returns the operation it started instead.
    pub fn mutate(
        &mut self,
        project: &str,
        zone: &str,
        mutation: Mutation<'_>,
        request_id: Option<&str>,
    ) -> Result<Operation, ApiError> {
        if let Some(op) = self.replay(project, zone, request_id)? {
            return Ok(op);
        }
        let op = match mutation {
            Mutation::Insert(body) => self.insert(project, zone, body),
            Mutation::BulkInsert(body) => self.bulk_insert(project, zone, body),
            Mutation::Delete(name) => self.delete(project, zone, name),
            Mutation::Start(name) => self.start(project, zone, name),
            Mutation::Stop(name) => self.stop(project, zone, name),
            Mutation::Resume(name) => self.resume(project, zone, name),
            Mutation::SetLabels(name, body) => self.set_labels(project, zone, name, body),
        }?;
        self.store_operation(project, zone, request_id, op)
    }
}
