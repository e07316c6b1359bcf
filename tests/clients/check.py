#!/usr/bin/env python3
"""Real Kafka clients against a running kmeta cluster, used as black boxes.

Usage: check.py SCENARIO --bootstrap HOST:PORT [--topic T] [...]
Each scenario prints one line of JSON and exits 0, or prints why it failed and exits 1.
Driven by tests/kmeta/clients.rs (which starts the cluster); runnable by hand too.
"""
import argparse
import asyncio
import json
import subprocess
import sys
import time


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def until(pred, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # a client error while the cluster settles: retry
            last = e
        time.sleep(0.2)
    fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def async_until(call, pred, what, timeout=10):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = await call()
            if pred(last):
                return last
        except Exception as e:  # a client error while the cluster settles: retry
            last = e
        await asyncio.sleep(0.2)
    fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------- kcat
def kcat(args):
    out = subprocess.run(["kcat", "-b", args.bootstrap, "-L", "-J", "-m", "10"],
                         capture_output=True, text=True, timeout=30)
    check(out.returncode == 0, f"kcat -L failed: {out.stderr}")
    md = json.loads(out.stdout)
    brokers = sorted(b["id"] for b in md["brokers"])
    check(len(brokers) == args.brokers, f"kcat sees brokers {brokers}")
    topics = {t["topic"]: t for t in md["topics"]}
    if args.topic:
        check(args.topic in topics, f"kcat does not list {args.topic}: {list(topics)}")
        for p in topics[args.topic]["partitions"]:
            check(p["leader"] in brokers, f"partition {p} has no live leader")
    print(json.dumps({"brokers": brokers, "topics": sorted(topics)}))


# ---------------------------------------------------------------------------- confluent-kafka
def confluent(args):
    from confluent_kafka import Consumer, TopicPartition, ElectionType
    from confluent_kafka.admin import AdminClient, NewTopic, NewPartitions

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    md = admin.list_topics(timeout=10)
    check(len(md.brokers) == args.brokers, f"confluent sees brokers {list(md.brokers)}")
    check(md.controller_id in md.brokers, f"controller id {md.controller_id} is not a live broker")
    t = args.topic
    for _, f in admin.create_topics([NewTopic(t, 3, 3)]).items():
        f.result(timeout=30)
    # A second create of the same name is refused.
    try:
        for _, f in admin.create_topics([NewTopic(t, 3, 3)]).items():
            f.result(timeout=30)
        fail("creating an existing topic succeeded")
    except Exception as e:
        check("TOPIC_ALREADY_EXISTS" in str(e) or "already exists" in str(e), f"unexpected error {e}")
    # Another broker may be a few milliseconds behind the one that took the create.
    md = until(lambda: (lambda m: m if m.topics[t].error is None else None)(admin.list_topics(topic=t, timeout=10)),
               10, f"{t} in metadata")
    parts = md.topics[t].partitions
    check(len(parts) == 3, f"{t} has {len(parts)} partitions")
    for p in parts.values():
        check(len(p.replicas) == 3 and p.leader in p.replicas and set(p.isrs) <= set(p.replicas),
              f"bad partition {p.id}: leader {p.leader} replicas {p.replicas} isr {p.isrs}")
    for _, f in admin.create_partitions([NewPartitions(t, 4)]).items():
        f.result(timeout=30)
    until(lambda: len(admin.list_topics(topic=t, timeout=10).topics[t].partitions) == 4, 10, "4 partitions")

    # Offsets with a group id: commit, then read back.
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "confluent-group",
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(t, 0, 42), TopicPartition(t, 1, 7)], asynchronous=False)
    got = {tp.partition: tp.offset for tp in c.committed([TopicPartition(t, 0), TopicPartition(t, 1)], timeout=10)}
    check(got == {0: 42, 1: 7}, f"committed offsets {got}")
    c.close()

    # Preferred election: every leader is already preferred, so either success or "not needed".
    res = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(t, 0)]).result()
    for tp, err in res.items():
        check(err is None or "ELECTION_NOT_NEEDED" in str(err) or "not needed" in str(err).lower(),
              f"elect leaders {tp}: {err}")

    if not args.keep:
        for _, f in admin.delete_topics([t]).items():
            f.result(timeout=30)
        until(lambda: t not in admin.list_topics(timeout=10).topics, 10, f"{t} to disappear")
    print(json.dumps({"topic": t, "committed": got}))


# ---------------------------------------------------------------------------- kafka-python
def kafka_python(args):
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.admin import NewTopic, NewPartitions
    from kafka.structs import OffsetAndMetadata
    from kafka.protocol.admin import ElectionType

    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=30000)
    cluster = admin.describe_cluster()
    check(len(cluster["brokers"]) == args.brokers, f"kafka-python sees {cluster['brokers']}")
    t = args.topic
    admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=2)])
    # Another broker may be a few milliseconds behind the one that took the create.
    until(lambda: t in admin.list_topics(), 10, f"{t} listed")
    until(lambda: len(admin.describe_topics([t])[0]["partitions"]) == 3, 10, f"{t} with 3 partitions")
    admin.create_partitions({t: NewPartitions(total_count=5)})
    until(lambda: len(admin.describe_topics([t])[0]["partitions"]) == 5, 10, f"{t} with 5 partitions")

    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap, group_id="kafka-python-group",
                             enable_auto_commit=False)
    tp = TopicPartition(t, 2)
    consumer.commit({tp: OffsetAndMetadata(1234, "meta", -1)})
    got = consumer.committed(tp)
    check(got == 1234, f"committed {got}")
    consumer.close()
    offsets = admin.list_group_offsets("kafka-python-group")["kafka-python-group"]
    check(offsets[tp].offset == 1234, f"list_group_offsets {offsets}")

    admin.elect_leaders(ElectionType.PREFERRED, {t: [0]})

    # Reassign partition 0 to a different pair of brokers and wait until it completes.
    [desc] = admin.describe_topics([t])
    p0 = next(p for p in desc["partitions"] if p["partition_index"] == 0)
    brokers = sorted(b["broker_id"] for b in cluster["brokers"])
    target = [b for b in brokers if b not in p0["replica_nodes"]] + p0["replica_nodes"][:1]
    admin.alter_partition_reassignments({TopicPartition(t, 0): target})

    def done():
        ongoing = admin.list_partition_reassignments()
        if TopicPartition(t, 0) in ongoing:
            return False
        [d] = admin.describe_topics([t])
        p = next(p for p in d["partitions"] if p["partition_index"] == 0)
        return sorted(p["replica_nodes"]) == sorted(target) and sorted(p["isr_nodes"]) == sorted(target)

    until(done, 20, f"reassignment of {t}-0 to {target}")
    if not args.keep:
        admin.delete_topics([t])
        until(lambda: t not in admin.list_topics(), 10, f"{t} to disappear")
    admin.close()
    print(json.dumps({"topic": t, "reassigned_to": target}))


# ---------------------------------------------------------------------------- aiokafka
def aiokafka_check(args):
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic, NewPartitions

    async def run():
        admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
        await admin.start()
        try:
            t = args.topic
            await admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=3)])
            # Another broker may be a few milliseconds behind the one that took the create.
            await async_until(lambda: admin.list_topics(), lambda ts: t in ts, f"{t} listed")
            await admin.create_partitions({t: NewPartitions(total_count=3)})
            await async_until(lambda: admin.describe_topics([t]),
                              lambda d: len(d[0]["partitions"]) == 3, f"{t} with 3 partitions")
            consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id="aiokafka-group",
                                        enable_auto_commit=False)
            await consumer.start()
            try:
                tp = TopicPartition(t, 1)
                consumer.assign([tp])
                await consumer.commit({tp: 99})
                got = await consumer.committed(tp)
                check(got == 99, f"committed {got}")
            finally:
                await consumer.stop()
            if not args.keep:
                await admin.delete_topics([t])
            return {"topic": t, "committed": 99}
        finally:
            await admin.close()

    print(json.dumps(asyncio.run(run())))


# ---------------------------------------------------------------------------- security
def security_conf(args, lib):
    """The client settings for --security-protocol and the --ssl-* files, in lib's spelling."""
    proto = args.security_protocol
    if proto == "PLAINTEXT":
        return {}
    tls = proto in ("SSL", "SASL_SSL")
    sasl = proto.startswith("SASL_")
    if lib in ("kcat", "confluent"):
        c = {"security.protocol": proto.lower()}
        if tls and args.ssl_ca:
            c["ssl.ca.location"] = args.ssl_ca
        if tls and args.ssl_cert:
            c["ssl.certificate.location"] = args.ssl_cert
            c["ssl.key.location"] = args.ssl_key
        if sasl:
            c.update({"sasl.mechanism": args.sasl_mechanism, "sasl.username": args.user,
                      "sasl.password": args.password})
        return c
    if lib == "kafka-python":
        c = {"security_protocol": proto}
        if tls:
            c["ssl_cafile"] = args.ssl_ca or None
        if tls and args.ssl_cert:
            c.update(ssl_certfile=args.ssl_cert, ssl_keyfile=args.ssl_key)
        if sasl:
            c.update(sasl_mechanism=args.sasl_mechanism, sasl_plain_username=args.user,
                     sasl_plain_password=args.password)
        return c
    if lib == "aiokafka":
        c = {"security_protocol": proto}
        if tls:
            from aiokafka.helpers import create_ssl_context
            c["ssl_context"] = create_ssl_context(cafile=args.ssl_ca or None,
                                                  certfile=args.ssl_cert or None,
                                                  keyfile=args.ssl_key or None)
        if sasl:
            c.update(sasl_mechanism=args.sasl_mechanism, sasl_plain_username=args.user,
                     sasl_plain_password=args.password)
        return c
    fail(f"no security settings for {lib}")


def kcat_x(conf):
    return [a for k, v in conf.items() for a in ("-X", f"{k}={v}")]


def secure_refused(args):
    """The client must fail to fetch metadata: no certificate where one is required, a
    plaintext client on a TLS port, or a server it does not trust."""
    import logging
    lib = args.client
    started = time.time()
    # What the client reported along the way (its log, its error callback): the reason a
    # broker gave is there, while the call itself fails with a generic "no brokers".
    reported = []

    class Collect(logging.Handler):
        def emit(self, record):
            reported.append(record.getMessage())
    logging.getLogger().addHandler(Collect())
    logging.getLogger().setLevel(logging.INFO)
    try:
        if lib == "kcat":
            out = subprocess.run(["kcat", "-b", args.bootstrap, "-L", "-J", "-m", "5"]
                                 + kcat_x(security_conf(args, "kcat")),
                                 capture_output=True, text=True, timeout=30)
            check(out.returncode != 0, f"kcat listed metadata: {out.stdout[:200]}")
            err = out.stderr.strip()
        elif lib == "confluent":
            from confluent_kafka.admin import AdminClient
            admin = AdminClient({"bootstrap.servers": args.bootstrap, **security_conf(args, lib),
                                 "error_cb": lambda e: reported.append(str(e)),
                                 "logger": logging.getLogger("rdkafka")})
            try:
                md = admin.list_topics(timeout=5)
                fail(f"confluent listed metadata: brokers {list(md.brokers)}")
            except Exception as e:
                err = str(e)
            admin.poll(1)  # serves the error and log callbacks
        elif lib == "kafka-python":
            from kafka import KafkaAdminClient
            try:
                admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=5000,
                                         bootstrap_timeout_ms=5000, **security_conf(args, lib))
                brokers = admin.describe_cluster()["brokers"]
                fail(f"kafka-python described the cluster: {brokers}")
            except Exception as e:
                err = repr(e)
        elif lib == "aiokafka":
            from aiokafka.admin import AIOKafkaAdminClient

            async def run():
                admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=5000,
                                            **security_conf(args, lib))
                try:
                    await asyncio.wait_for(admin.start(), 15)
                    return await asyncio.wait_for(admin.list_topics(), 10)
                finally:
                    await admin.close()
            try:
                topics = asyncio.run(run())
                fail(f"aiokafka listed topics: {topics}")
            except SystemExit:
                raise
            except BaseException as e:
                err = repr(e)
    except subprocess.TimeoutExpired:
        err = "timed out"
    err = f"{err} | reported: {' / '.join(dict.fromkeys(reported))}"
    # Refused by the connection, not by a mistake in this script's settings.
    expected = args.refusal or {"kcat": "transport failure", "confluent": "_TRANSPORT",
                                "kafka-python": "Unable to bootstrap",
                                "aiokafka": "Unable to bootstrap"}[lib]
    check(expected in str(err), f"{lib} failed, but not with {expected!r}: {err}")
    at = str(err).find(expected)
    print(json.dumps({"client": lib, "refused": True, "seconds": round(time.time() - started, 1),
                      "error": str(err)[max(0, at - 150):at + 150]}))


def add_scram_user(args):
    """Sets --user's --password for SCRAM-SHA-256 and SCRAM-SHA-512 with confluent-kafka's
    AlterUserScramCredentials, then describes it."""
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": args.bootstrap, **security_conf(args, "confluent")})
    ups = [UserScramCredentialUpsertion(args.user, ScramCredentialInfo(m, 4096), args.password.encode())
           for m in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)]
    for _, f in admin.alter_user_scram_credentials(ups).items():
        f.result(timeout=30)
    described = until(lambda: admin.describe_user_scram_credentials([args.user])[args.user].result(timeout=10),
                      10, f"{args.user}'s credentials")
    mechs = sorted(str(c.mechanism) for c in described.scram_credential_infos)
    print(json.dumps({"user": args.user, "mechanisms": mechs}))


def secure(args):
    """Over the given security settings: list the brokers, create a topic, produce
    --count messages, read them back in a group, and commit and read back an offset."""
    if args.expect_refused:
        return secure_refused(args)
    lib, t, n = args.client, args.topic, args.count
    sent = [f"{lib}-{i}" for i in range(n)]
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": args.bootstrap, **security_conf(args, "confluent")})
    if lib != "kafka-python" and lib != "aiokafka":
        for _, f in admin.create_topics([NewTopic(t, 2, args.rf)]).items():
            f.result(timeout=30)
        until(lambda: t in admin.list_topics(timeout=10).topics
              and admin.list_topics(topic=t, timeout=10).topics[t].error is None, 10, f"{t} in metadata")
    got, committed, brokers = [], None, None
    if lib == "kcat":
        conf = kcat_x(security_conf(args, "kcat"))
        md = subprocess.run(["kcat", "-b", args.bootstrap, "-L", "-J", "-m", "10"] + conf,
                            capture_output=True, text=True, timeout=30)
        check(md.returncode == 0, f"kcat -L: {md.stderr}")
        brokers = sorted(b["id"] for b in json.loads(md.stdout)["brokers"])
        p = subprocess.run(["kcat", "-b", args.bootstrap, "-P", "-t", t, "-X", "acks=all"] + conf,
                           input="\n".join(sent) + "\n", capture_output=True, text=True, timeout=60)
        check(p.returncode == 0, f"kcat -P: {p.stderr}")
        c = subprocess.run(["kcat", "-b", args.bootstrap, "-C", "-t", t, "-o", "beginning", "-e", "-q"] + conf,
                           capture_output=True, text=True, timeout=60)
        check(c.returncode == 0, f"kcat -C: {c.stderr}")
        got = [line for line in c.stdout.splitlines() if line]
    elif lib == "confluent":
        from confluent_kafka import Consumer, Producer, TopicPartition
        conf = security_conf(args, lib)
        brokers = sorted(admin.list_topics(timeout=10).brokers)
        prod = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", **conf})
        for m in sent:
            prod.produce(t, m.encode())
        check(prod.flush(30) == 0, "confluent: messages left unsent")
        c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{lib}-secure",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False, **conf})
        c.subscribe([t])
        deadline = time.time() + 60
        while len(got) < n and time.time() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                got.append(m.value().decode())
        c.commit(offsets=[TopicPartition(t, 0, 5)], asynchronous=False)
        committed = c.committed([TopicPartition(t, 0)], timeout=10)[0].offset
        c.close()
    elif lib == "kafka-python":
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.admin import NewTopic as KNewTopic
        from kafka.structs import OffsetAndMetadata
        conf = security_conf(args, lib)
        kadmin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=30000, **conf)
        brokers = sorted(b["broker_id"] for b in kadmin.describe_cluster()["brokers"])
        kadmin.create_topics([KNewTopic(t, num_partitions=2, replication_factor=args.rf)])
        until(lambda: t in kadmin.list_topics(), 10, f"{t} listed")
        kadmin.close()
        prod = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", **conf)
        for m in sent:
            prod.send(t, m.encode())
        prod.flush(30)
        prod.close()
        c = KafkaConsumer(t, bootstrap_servers=args.bootstrap, group_id=f"{lib}-secure",
                          auto_offset_reset="earliest", enable_auto_commit=False, **conf)
        deadline = time.time() + 60
        while len(got) < n and time.time() < deadline:
            for recs in c.poll(timeout_ms=1000).values():
                got.extend(r.value.decode() for r in recs)
        tp = TopicPartition(t, 0)
        c.commit({tp: OffsetAndMetadata(5, "", -1)})
        committed = c.committed(tp)
        c.close()
    elif lib == "aiokafka":
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic as ANewTopic

        async def run():
            conf = security_conf(args, lib)
            aadmin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap, **conf)
            await aadmin.start()
            try:
                desc = await aadmin.describe_cluster()
                bs = sorted(b["node_id"] for b in desc["brokers"])
                await aadmin.create_topics([ANewTopic(t, num_partitions=2, replication_factor=args.rf)])
                await async_until(lambda: aadmin.list_topics(), lambda ts: t in ts, f"{t} listed")
            finally:
                await aadmin.close()
            prod = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", **conf)
            await prod.start()
            try:
                for m in sent:
                    await prod.send_and_wait(t, m.encode())
            finally:
                await prod.stop()
            c = AIOKafkaConsumer(t, bootstrap_servers=args.bootstrap, group_id=f"{lib}-secure",
                                 auto_offset_reset="earliest", enable_auto_commit=False, **conf)
            await c.start()
            out = []
            try:
                deadline = time.time() + 60
                while len(out) < n and time.time() < deadline:
                    for recs in (await c.getmany(timeout_ms=1000)).values():
                        out.extend(r.value.decode() for r in recs)
                tp = TopicPartition(t, 0)
                await c.commit({tp: 5})
                done = await c.committed(tp)
            finally:
                await c.stop()
            return bs, out, done
        brokers, got, committed = asyncio.run(run())
    check(brokers == list(range(1, args.brokers + 1)), f"{lib} sees brokers {brokers}")
    check(sorted(got) == sorted(sent), f"{lib} read back {len(got)} of {n} messages")
    check(lib == "kcat" or committed == 5, f"{lib} committed {committed}")
    print(json.dumps({"client": lib, "brokers": brokers, "messages": len(got), "committed": committed}))


def acl_refused(args):
    """Logged in as --user, which has no ACLs: producing to --topic must fail with Kafka's
    topic authorization error, and consuming it in --group with the group authorization
    error, each as the client reports it."""
    lib, t, g = args.client, args.topic, args.group
    errors = {}
    if lib == "kcat":
        conf = kcat_x(security_conf(args, "kcat"))
        p = subprocess.run(["kcat", "-b", args.bootstrap, "-P", "-t", t, "-X", "acks=all"] + conf,
                           input="m\n", capture_output=True, text=True, timeout=60)
        errors["produce"] = p.stderr.strip()
        c = subprocess.run(["kcat", "-b", args.bootstrap, "-G", g, t, "-e", "-q",
                            "-X", "auto.offset.reset=earliest"] + conf,
                           capture_output=True, text=True, timeout=20)
        errors["consume"] = c.stderr.strip()
        want = {"produce": "Topic authorization failed", "consume": "Group authorization failed"}
    elif lib == "confluent":
        from confluent_kafka import Consumer, Producer
        conf = security_conf(args, lib)
        got = []
        prod = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", **conf})
        prod.produce(t, b"m", on_delivery=lambda err, m: got.append(err))
        prod.flush(30)
        errors["produce"] = str(got[0]) if got else "nothing delivered"
        c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": g,
                      "auto.offset.reset": "earliest", **conf})
        c.subscribe([t])
        deadline = time.time() + 20
        while "consume" not in errors and time.time() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is not None:
                errors["consume"] = str(m.error())
        c.close()
        want = {"produce": "TOPIC_AUTHORIZATION_FAILED", "consume": "GROUP_AUTHORIZATION_FAILED"}
    elif lib == "kafka-python":
        from kafka import KafkaConsumer, KafkaProducer
        conf = security_conf(args, lib)
        prod = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", max_block_ms=10000,
                             **conf)
        try:
            prod.send(t, b"m").get(timeout=20)
            errors["produce"] = "sent"
        except Exception as e:
            errors["produce"] = repr(e)
        prod.close()
        c = KafkaConsumer(t, bootstrap_servers=args.bootstrap, group_id=g,
                          auto_offset_reset="earliest", **conf)
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                c.poll(timeout_ms=1000)
            errors["consume"] = "no error"
        except Exception as e:
            errors["consume"] = repr(e)
        c.close()
        want = {"produce": "TopicAuthorizationFailedError",
                "consume": "GroupAuthorizationFailedError"}
    elif lib == "aiokafka":
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        async def run():
            conf = security_conf(args, lib)
            prod = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", **conf)
            await prod.start()
            try:
                await asyncio.wait_for(prod.send_and_wait(t, b"m"), 20)
                errors["produce"] = "sent"
            except Exception as e:
                errors["produce"] = repr(e)
            finally:
                await prod.stop()
            # Subscribed to the topic, aiokafka stops at its metadata (the topic refused
            # first); the group's committed offset asks the group's coordinator alone.
            from aiokafka import TopicPartition
            c = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=g,
                                 auto_offset_reset="earliest", **conf)
            try:
                await asyncio.wait_for(c.start(), 20)
                await asyncio.wait_for(c.committed(TopicPartition(t, 0)), 20)
                errors["consume"] = "no error"
            except Exception as e:
                errors["consume"] = repr(e)
            finally:
                await c.stop()
        asyncio.run(run())
        want = {"produce": "TopicAuthorizationFailedError",
                "consume": "GroupAuthorizationFailedError"}
    for what, text in want.items():
        check(text in errors.get(what, ""), f"{lib} {what}: no {text!r} in {errors.get(what)!r}")
    print(json.dumps({"client": lib, "refused": errors}))


# ---------------------------------------------------------------------------- helpers for other tests
def leaders(args):
    """Prints {partition: leader} for a topic, as confluent-kafka's metadata shows it."""
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    md = admin.list_topics(topic=args.topic, timeout=10)
    t = md.topics[args.topic]
    check(t.error is None, f"{args.topic}: {t.error}")
    print(json.dumps({"brokers": sorted(md.brokers),
                      "leaders": {str(p.id): p.leader for p in t.partitions.values()},
                      "isr": {str(p.id): p.isrs for p in t.partitions.values()},
                      "replicas": {str(p.id): p.replicas for p in t.partitions.values()}}))


def committed(args):
    """Prints the offset committed by --group for partition 0 of --topic."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False})
    [tp] = c.committed([TopicPartition(args.topic, 0)], timeout=10)
    c.close()
    print(json.dumps({"offset": tp.offset}))


def commit(args):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(args.topic, 0, args.offset)], asynchronous=False)
    c.close()
    print(json.dumps({"offset": args.offset}))


def create(args):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for _, f in admin.create_topics([NewTopic(args.topic, args.partitions, args.rf)]).items():
        f.result(timeout=30)
    print(json.dumps({"topic": args.topic}))


# ---------------------------------------------------------------------------- data plane
def expected_messages(args):
    """(partition, value) in produce order: partition i % partitions."""
    return [(i % args.partitions, f"{args.client}-{i}") for i in range(args.count)]


def check_read_back(args, got):
    """got: {partition: [values in offset order]}; every acked value, in order, nothing else."""
    want = {}
    for p, v in expected_messages(args):
        want.setdefault(p, []).append(v)
    for p in want:
        check(got.get(p, []) == want[p],
              f"partition {p}: read {got.get(p, [])[:5]}... ({len(got.get(p, []))}), "
              f"expected {want[p][:5]}... ({len(want[p])})")


def roundtrip(args):
    """Create the topic (RF 3, min.insync.replicas=2), produce --count messages with acks=all
    using --client, then read them back from the earliest offset with the same client."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    t = args.topic
    for _, f in admin.create_topics([NewTopic(t, args.partitions, args.rf,
                                              config={"min.insync.replicas": "2"})]).items():
        f.result(timeout=30)
    until(lambda: (lambda m: m.topics[t].error is None and
                   all(p.leader >= 0 for p in m.topics[t].partitions.values()))(
        admin.list_topics(topic=t, timeout=10)), 20, f"{t} with leaders")
    msgs = expected_messages(args)
    got = {}
    # Without idempotence a client keeps its order across retries only with one request in
    # flight (Kafka's rule): a produce that reaches a leader before it has applied its new
    # partition is retried, and a later batch sent behind it could land first.
    if args.client == "kcat":
        for p in range(args.partitions):
            body = "".join(v + "\n" for q, v in msgs if q == p)
            out = subprocess.run(["kcat", "-b", args.bootstrap, "-P", "-t", t, "-p", str(p),
                                  "-X", "acks=all", "-X", "message.timeout.ms=30000",
                                  "-X", "max.in.flight=1"],
                                 input=body, capture_output=True, text=True, timeout=60)
            check(out.returncode == 0, f"kcat -P failed: {out.stderr}")
        for p in range(args.partitions):
            out = subprocess.run(["kcat", "-b", args.bootstrap, "-C", "-t", t, "-p", str(p),
                                  "-o", "beginning", "-e", "-f", "%s\n"],
                                 capture_output=True, text=True, timeout=60)
            check(out.returncode == 0, f"kcat -C -e exited {out.returncode}: {out.stderr}")
            got[p] = [line for line in out.stdout.split("\n") if line]
    elif args.client == "confluent":
        from confluent_kafka import Producer, Consumer, TopicPartition
        conf = {"bootstrap.servers": args.bootstrap, "acks": "all",
                "enable.idempotence": args.idempotent}
        if not args.idempotent:
            conf["max.in.flight"] = 1
        prod = Producer(conf)
        errors = []
        for p, v in msgs:
            prod.produce(t, v.encode(), partition=p,
                         on_delivery=lambda err, m: err and errors.append(str(err)))
            prod.poll(0)
        check(prod.flush(60) == 0, "confluent producer did not flush in 60 s")
        check(not errors, f"delivery errors: {errors[:3]}")
        c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{t}-reader",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.assign([TopicPartition(t, p, 0) for p in range(args.partitions)])
        deadline = time.time() + 60
        n = 0
        while n < len(msgs) and time.time() < deadline:
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            got.setdefault(m.partition(), []).append(m.value().decode())
            n += 1
        c.close()
    elif args.client == "kafka-python":
        from kafka import KafkaProducer, KafkaConsumer, TopicPartition
        prod = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all",
                             enable_idempotence=args.idempotent,
                             max_in_flight_requests_per_connection=5 if args.idempotent else 1)
        futures = [prod.send(t, v.encode(), partition=p) for p, v in msgs]
        prod.flush(60)
        for f in futures:
            f.get(timeout=60)
        prod.close()
        c = KafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False,
                          auto_offset_reset="earliest", consumer_timeout_ms=10000)
        c.assign([TopicPartition(t, p) for p in range(args.partitions)])
        c.seek_to_beginning()
        deadline = time.time() + 60
        n = 0
        while n < len(msgs) and time.time() < deadline:
            for tp, records in c.poll(timeout_ms=1000).items():
                for r in records:
                    got.setdefault(tp.partition, []).append(r.value.decode())
                    n += 1
        c.close()
    elif args.client == "aiokafka":
        from aiokafka import AIOKafkaProducer, AIOKafkaConsumer, TopicPartition

        async def run():
            prod = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all",
                                    enable_idempotence=args.idempotent)
            await prod.start()
            try:
                futures = [await prod.send(t, v.encode(), partition=p) for p, v in msgs]
                for f in futures:
                    await f
            finally:
                await prod.stop()
            c = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, enable_auto_commit=False,
                                 auto_offset_reset="earliest")
            await c.start()
            try:
                c.assign([TopicPartition(t, p) for p in range(args.partitions)])
                await c.seek_to_beginning()
                deadline = time.time() + 60
                n = 0
                while n < len(msgs) and time.time() < deadline:
                    batch = await c.getmany(timeout_ms=1000)
                    for tp, records in batch.items():
                        for r in records:
                            got.setdefault(tp.partition, []).append(r.value.decode())
                            n += 1
            finally:
                await c.stop()
        asyncio.run(run())
    else:
        fail(f"unknown client {args.client}")
    check_read_back(args, got)
    print(json.dumps({"client": args.client, "messages": len(msgs), "idempotent": args.idempotent}))


def produce_stream(args):
    """Produce --count messages ("0", "1", ...) to partition 0 of --topic with acks=all,
    pacing them over a few seconds, and write the values acknowledged to --out."""
    delivered = []
    if args.client == "confluent":
        from confluent_kafka import Producer
        prod = Producer({"bootstrap.servers": args.bootstrap, "acks": "all",
                         "enable.idempotence": args.idempotent, "message.timeout.ms": 60000})

        def on_delivery(err, m):
            if err is None:
                delivered.append(m.value().decode())
        for i in range(args.count):
            prod.produce(args.topic, str(i).encode(), partition=0, on_delivery=on_delivery)
            prod.poll(0)
            time.sleep(0.002)
        prod.flush(90)
    elif args.client == "kafka-python":
        from kafka import KafkaProducer
        prod = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all",
                             enable_idempotence=args.idempotent, request_timeout_ms=30000,
                             delivery_timeout_ms=60000)
        futures = []
        for i in range(args.count):
            futures.append((str(i), prod.send(args.topic, str(i).encode(), partition=0)))
            time.sleep(0.002)
        prod.flush(90)
        for v, f in futures:
            try:
                f.get(timeout=1)
                delivered.append(v)
            except Exception:
                pass
        prod.close()
    else:
        fail(f"produce-stream supports confluent and kafka-python, not {args.client}")
    with open(args.out, "w") as f:
        json.dump({"delivered": delivered}, f)
    print(json.dumps({"client": args.client, "delivered": len(delivered)}))


def verify_read(args):
    """Read partition 0 of --topic from the start; every value acknowledged in --out must be
    there; with --idempotent none twice; each value after the previous one."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
    with open(args.out) as f:
        delivered = json.load(f)["delivered"]
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"{args.topic}-verify",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(args.topic, 0, 0)])
    # A leader elected moments ago answers OFFSET_NOT_AVAILABLE (retriable, KIP-207) until its
    # high watermark is established; ask again, as Kafka's own tools do.
    deadline = time.time() + 20
    while True:
        try:
            lo, hi = c.get_watermark_offsets(TopicPartition(args.topic, 0), timeout=10)
            break
        except KafkaException as e:
            if e.args[0].code() != KafkaError.OFFSET_NOT_AVAILABLE or time.time() > deadline:
                raise
            time.sleep(0.2)
    got = []
    deadline = time.time() + 60
    while time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error():
            got.append(m.value().decode())
            if m.offset() + 1 >= hi:
                break
        elif m is None and len(got) >= hi - lo:
            break
    c.close()
    missing = set(delivered) - set(got)
    check(not missing, f"{len(missing)} acknowledged messages missing, e.g. {sorted(missing, key=int)[:5]}")
    if args.idempotent:
        dups = len(got) - len(set(got))
        check(dups == 0, f"{dups} duplicates from an idempotent producer")
        ints = [int(v) for v in got]
        check(ints == sorted(ints), "messages out of order")
    print(json.dumps({"delivered": len(delivered), "read": len(got)}))


# ---------------------------------------------------------------------------- groups
def produce_spread(args):
    """Produce --count messages with values "<--offset + i>" round-robin over --partitions
    partitions of --topic, acks=all; fails unless every one is acknowledged."""
    from confluent_kafka import Producer
    prod = Producer({"bootstrap.servers": args.bootstrap, "acks": "all",
                     "enable.idempotence": True, "message.timeout.ms": 90000})
    failed = []

    def on_delivery(err, m):
        if err is not None:
            failed.append(str(err))
    for i in range(args.count):
        prod.produce(args.topic, str(args.offset + i).encode(), partition=i % args.partitions,
                     on_delivery=on_delivery)
        prod.poll(0)
    left = prod.flush(120)
    check(left == 0 and not failed, f"{left} unacknowledged, errors: {failed[:3]}")
    print(json.dumps({"produced": args.count}))


def group_member(args):
    """One member of --group subscribed to --topic with --client, until --stop exists or
    --seconds pass. Appends JSON lines to --out: {"assigned": [[t, p], ...]} whenever the
    assignment changes, {"rebalanced": n} at each rebalance (confluent only), {"batch": [[p, o, value], ...]} for each batch consumed *before* its
    synchronous commit, then {"committed": true|false} after the commit. Offsets are committed
    only by those commits (no auto-commit), so a message may be consumed again only after a
    commit that failed or never ran."""
    import os
    out = open(args.out, "a", buffering=1)

    def emit(obj):
        out.write(json.dumps(obj) + "\n")
    deadline = time.time() + args.seconds
    stop = lambda: time.time() > deadline or (args.stop and os.path.exists(args.stop))
    session = 6000
    last = None

    def note(assignment):
        nonlocal last
        cur = sorted([t, p] for t, p in assignment)
        if cur != last:
            last = cur
            emit({"assigned": cur})
    if args.client == "confluent":
        from confluent_kafka import Consumer
        conf = {"bootstrap.servers": args.bootstrap, "group.id": args.group,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "session.timeout.ms": session, "heartbeat.interval.ms": 1000}
        if args.assignor:
            conf["partition.assignment.strategy"] = args.assignor
        if args.instance:
            conf["group.instance.id"] = args.instance
        c = Consumer(conf)
        # Every rebalance that reaches this member, even one that gives back the same
        # partitions (the client assigns them itself after the callback).
        c.subscribe([args.topic], on_assign=lambda _c, ps: emit({"rebalanced": len(ps)}))
        while not stop():
            msgs = c.consume(500, 0.5)
            note((tp.topic, tp.partition) for tp in c.assignment())
            msgs = [m for m in msgs if not m.error()]
            if not msgs:
                continue
            emit({"batch": [[m.partition(), m.offset(), m.value().decode()] for m in msgs]})
            try:
                c.commit(asynchronous=False)
                emit({"committed": True})
            except Exception as e:
                emit({"committed": False, "error": str(e)})
        c.close()
    elif args.client == "kafka-python":
        from kafka import KafkaConsumer
        kw = {}
        if args.instance:
            kw["group_instance_id"] = args.instance
        c = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                          enable_auto_commit=False, auto_offset_reset="earliest",
                          session_timeout_ms=session, heartbeat_interval_ms=1000, **kw)
        while not stop():
            polled = c.poll(timeout_ms=500, max_records=500)
            note((tp.topic, tp.partition) for tp in c.assignment())
            msgs = [m for ms in polled.values() for m in ms]
            if not msgs:
                continue
            emit({"batch": [[m.partition, m.offset, m.value.decode()] for m in msgs]})
            try:
                c.commit()
                emit({"committed": True})
            except Exception as e:
                emit({"committed": False, "error": str(e)})
        c.close()
    elif args.client == "aiokafka":
        async def run():
            from aiokafka import AIOKafkaConsumer
            kw = {}
            if args.instance:
                kw["group_instance_id"] = args.instance
            c = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap,
                                 group_id=args.group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", session_timeout_ms=session,
                                 heartbeat_interval_ms=1000, **kw)
            await c.start()
            try:
                while not stop():
                    polled = await c.getmany(timeout_ms=500, max_records=500)
                    note((tp.topic, tp.partition) for tp in c.assignment())
                    msgs = [m for ms in polled.values() for m in ms]
                    if not msgs:
                        continue
                    emit({"batch": [[m.partition, m.offset, m.value.decode()] for m in msgs]})
                    try:
                        await c.commit()
                        emit({"committed": True})
                    except Exception as e:
                        emit({"committed": False, "error": str(e)})
            finally:
                await c.stop()
        asyncio.run(run())
    else:
        fail(f"group-member supports confluent, kafka-python and aiokafka, not {args.client}")
    emit({"closed": True})
    print(json.dumps({"client": args.client, "closed": True}))


SCENARIOS = {
    "produce-stream": produce_stream,
    "verify-read": verify_read,
    "roundtrip": roundtrip,
    "kcat": kcat,
    "confluent": confluent,
    "kafka-python": kafka_python,
    "aiokafka": aiokafka_check,
    "leaders": leaders,
    "committed": committed,
    "commit": commit,
    "create": create,
    "produce-spread": produce_spread,
    "group-member": group_member,
    "secure": secure,
    "add-scram-user": add_scram_user,
    "acl-refused": acl_refused,
}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="")
    ap.add_argument("--group", default="g")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--rf", type=int, default=3)
    ap.add_argument("--brokers", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="do not delete the topic at the end")
    ap.add_argument("--client", default="confluent",
                    choices=["kcat", "confluent", "kafka-python", "aiokafka"])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--out", default="")
    ap.add_argument("--stop", default="", help="group-member: exit once this file exists")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--assignor", default="", help="confluent partition.assignment.strategy")
    ap.add_argument("--instance", default="", help="group.instance.id (static membership)")
    ap.add_argument("--security-protocol", default="PLAINTEXT",
                    choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
    ap.add_argument("--sasl-mechanism", default="SCRAM-SHA-256")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument("--refusal", default="", help="secure: text the refusal must contain")
    ap.add_argument("--ssl-ca", default="", help="PEM file of the CA the client trusts")
    ap.add_argument("--ssl-cert", default="", help="PEM file of the client's certificate")
    ap.add_argument("--ssl-key", default="", help="PEM file of the client's private key")
    ap.add_argument("--expect-refused", action="store_true",
                    help="secure: the client must fail to connect")
    a = ap.parse_args()
    SCENARIOS[a.scenario](a)
