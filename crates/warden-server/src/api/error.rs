//! The one place where errors of the lower layers become gRPC statuses, with
//! etcd's codes and messages so etcd clients recognise them.

use tonic::{Code, Status};

use crate::node::NodeError;
use warden_core::state::StateError;

pub fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::NoLeader
        | NodeError::Timeout
        | NodeError::LeaderChanged
        | NodeError::Stopped
        | NodeError::NotReady => Status::new(Code::Unavailable, e.to_string()),
        NodeError::Internal(m) => Status::internal(m),
        NodeError::Refused { code, message } => Status::new(Code::from_i32(code), message),
    }
}

pub fn state_status(e: StateError) -> Status {
    use warden_core::state::ErrorClass;
    let code = match e.class() {
        ErrorClass::OutOfRange => Code::OutOfRange,
        ErrorClass::InvalidArgument => Code::InvalidArgument,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::FailedPrecondition => Code::FailedPrecondition,
        ErrorClass::ResourceExhausted => Code::ResourceExhausted,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
        ErrorClass::Unauthenticated => Code::Unauthenticated,
        ErrorClass::Internal => Code::Internal,
    };
    Status::new(code, e.grpc_message())
}

/// etcd's answer to a request over the size limit.
pub fn too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// The request-size limit (`--max-request-bytes`) every RPC that proposes
/// checks before it does anything, as etcd refuses any proposal larger than
/// its limit: the protobuf-encoded size of `m` must not exceed `max`.
pub fn check_request_size<M: prost::Message>(m: &M, max: usize) -> Result<(), Status> {
    if m.encoded_len() > max {
        return Err(too_large());
    }
    Ok(())
}
