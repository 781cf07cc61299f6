# test_tinker_pb: the Tinker protobuf codec (api/tinker) is not part of chord_all; the test builds
# requests with the generated protobuf-c API (tinker.pb-c.h), so it links chord_tinker_pb.
target_link_libraries(test_tinker_pb PRIVATE chord_tinker_pb)
