//! The FUSE filesystem over an [`ObjectStore`](common::ObjectStore) and `s3vol mount`.
//!
//! Not built yet: issue #3 fills this crate in (filesystem core over the store, the fuser
//! adapter, mount sessions). It depends only on `common`'s trait and the generic data path.
