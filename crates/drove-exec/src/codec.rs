//! The datafusion-proto extension codec for drove's own plan nodes.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use drove_proto::ShuffleReaderNode;
use prost::Message;

use crate::shuffle::{ReadMode, ShuffleReaderExec, schema_from_bytes, schema_to_bytes};

/// Encodes and decodes [`ShuffleReaderExec`] inside datafusion-proto plans.
#[derive(Debug, Default)]
pub struct DroveCodec;

fn external(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl PhysicalExtensionCodec for DroveCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal(
                "ShuffleReaderExec takes no inputs".into(),
            ));
        }
        let node = ShuffleReaderNode::decode(buf)
            .map_err(|e| DataFusionError::Internal(format!("not a drove plan node: {e}")))?;
        if node.partitions == 0 {
            return Err(DataFusionError::Internal(
                "a shuffle reader with 0 partitions".into(),
            ));
        }
        let mode = match node.mode() {
            drove_proto::ReadMode::Gather => ReadMode::Gather,
            drove_proto::ReadMode::PerMap => ReadMode::PerMap,
        };
        let schema = schema_from_bytes(&node.schema).map_err(external)?;
        Ok(Arc::new(ShuffleReaderExec::new(
            node.stage_id,
            mode,
            node.partitions as usize,
            schema,
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "drove cannot send the plan node {} to workers",
                node.name()
            )));
        };
        let mode = match reader.mode() {
            ReadMode::Gather => drove_proto::ReadMode::Gather,
            ReadMode::PerMap => drove_proto::ReadMode::PerMap,
        };
        let message = ShuffleReaderNode {
            stage_id: reader.stage(),
            mode: mode as i32,
            partitions: reader.partitions() as u32,
            schema: schema_to_bytes(&reader.schema()).map_err(external)?,
        };
        message
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("encoding a shuffle reader: {e}")))
    }
}

/// A physical plan as datafusion-proto bytes.
pub fn plan_to_bytes(plan: Arc<dyn ExecutionPlan>) -> crate::Result<Vec<u8>> {
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &DroveCodec)?
            .to_vec(),
    )
}

/// A physical plan from datafusion-proto bytes.
pub fn plan_from_bytes(bytes: &[u8], ctx: &TaskContext) -> crate::Result<Arc<dyn ExecutionPlan>> {
    Ok(
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            bytes,
            ctx,
            &DroveCodec,
        )?,
    )
}
