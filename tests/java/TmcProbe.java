import com.taobao.api.internal.tmc.Message;
import com.taobao.api.internal.tmc.MessageHandler;
import com.taobao.api.internal.tmc.MessageStatus;
import com.taobao.api.internal.tmc.TmcClient;
import com.taobao.api.internal.toplink.LinkException;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The official TMC Java client (TOP SDK in alibaba-dingtalk-service-sdk) against a TMC server,
 * for tests/integration/test_java_client.py.
 *
 * <pre>
 * java -cp CLASSES:LIB/* -Dorg.apache.commons.logging.Log=ProbeLog TmcProbe \
 *     URL APP_KEY SECRET GROUP EXPECTED FAIL_EVERY [TIMEOUT_S [LINGER_MS]]
 * </pre>
 *
 * Logs in with {@code new TmcClient(url, appKey, secret, group)}; the handler fails
 * ({@code status.fail()}) every FAIL_EVERY-th message the first time it sees it and returns
 * normally otherwise (the SDK then confirms the message). Once EXPECTED distinct messages were
 * handled without failure it waits for the SDK's workers to go idle (their confirms are then
 * sent), lingers LINGER_MS, closes the client and exits 0; 3 after TIMEOUT_S without that;
 * 2 if the login fails.
 *
 * Every event is one JSON object on one line of stdout: start, login (connect() returned),
 * error (connect() threw: the SDK's text, e.g. "invalid sign"), message (id, retried as the
 * client saw it, first), fail, ok, offline/online (isOnline() changed), log (the SDK's own
 * warnings and errors, see ProbeLog), done or timeout (counters), closed.
 */
public final class TmcProbe {
    private TmcProbe() {}

    static synchronized void emit(String line) {
        System.out.println(line);
        System.out.flush();
    }

    static String quote(String text) {
        if (text == null) {
            return "null";
        }
        StringBuilder out = new StringBuilder("\"");
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"').toString();
    }

    /** "Class: message; caused by Class: message ..." for the whole cause chain. */
    static String describe(Throwable error) {
        StringBuilder out = new StringBuilder();
        for (Throwable t = error; t != null; t = t.getCause() == t ? null : t.getCause()) {
            if (out.length() > 0) {
                out.append("; caused by ");
            }
            out.append(t.getClass().getName()).append(": ").append(t.getMessage());
        }
        return out.toString();
    }

    /** Gives the probe the SDK's worker pool, to know when the confirms have been sent. */
    static final class ProbeClient extends TmcClient {
        ProbeClient(String url, String appKey, String secret, String group) {
            super(url, appKey, secret, group);
        }

        boolean workersIdle() {
            ThreadPoolExecutor pool = getThreadPool();
            return pool == null || (pool.getActiveCount() == 0 && pool.getQueue().isEmpty());
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 6) {
            System.err.println("usage: TmcProbe URL APP_KEY SECRET GROUP EXPECTED FAIL_EVERY"
                    + " [TIMEOUT_S [LINGER_MS]]");
            System.exit(64);
        }
        final String url = args[0];
        final int expected = Integer.parseInt(args[4]);
        final int failEvery = Integer.parseInt(args[5]);
        final long timeoutS = args.length > 6 ? Long.parseLong(args[6]) : 60L;
        final long lingerMs = args.length > 7 ? Long.parseLong(args[7]) : 1000L;

        final Set<Long> seen = ConcurrentHashMap.newKeySet();
        final Set<Long> handled = ConcurrentHashMap.newKeySet();
        final AtomicInteger firstSeen = new AtomicInteger();
        final AtomicInteger received = new AtomicInteger();
        final AtomicInteger failed = new AtomicInteger();
        final AtomicInteger redelivered = new AtomicInteger();
        final CountDownLatch done = new CountDownLatch(1);

        final ProbeClient client = new ProbeClient(url, args[1], args[2], args[3]);
        client.setMessageHandler(new MessageHandler() {
            @Override
            public void onMessage(Message message, MessageStatus status) {
                Long id = message.getId();
                Object retried = message.getRaw() == null ? null : message.getRaw().get("retried");
                boolean first = seen.add(id);
                received.incrementAndGet();
                if (!first) {
                    redelivered.incrementAndGet();
                }
                emit("{\"event\":\"message\",\"id\":" + id
                        + ",\"retried\":" + (retried == null ? "null" : quote(retried.toString()))
                        + ",\"first\":" + first
                        + ",\"topic\":" + quote(message.getTopic()) + "}");
                if (first && failEvery > 0 && firstSeen.incrementAndGet() % failEvery == 0) {
                    failed.incrementAndGet();
                    status.fail("tmc probe: failing every " + failEvery + "th message once");
                    emit("{\"event\":\"fail\",\"id\":" + id + "}");
                    return;
                }
                emit("{\"event\":\"ok\",\"id\":" + id + "}");
                if (handled.add(id) && handled.size() >= expected) {
                    done.countDown();
                }
            }
        });

        emit("{\"event\":\"start\",\"url\":" + quote(url) + ",\"expected\":" + expected
                + ",\"fail_every\":" + failEvery + "}");
        try {
            client.connect();
        } catch (Exception e) {
            String code = e instanceof LinkException
                    ? String.valueOf(((LinkException) e).getErrorCode()) : "null";
            emit("{\"event\":\"error\",\"stage\":\"connect\",\"type\":" + quote(e.getClass().getName())
                    + ",\"code\":" + code + ",\"text\":" + quote(e.getMessage())
                    + ",\"detail\":" + quote(describe(e)) + "}");
            client.close();
            emit("{\"event\":\"closed\"}");
            System.exit(2);
        }
        emit("{\"event\":\"login\",\"online\":" + client.isOnline() + "}");

        Thread watcher = new Thread(() -> {
            boolean online = client.isOnline();
            while (!Thread.currentThread().isInterrupted()) {
                boolean now = client.isOnline();
                if (now != online) {
                    emit("{\"event\":\"" + (now ? "online" : "offline") + "\"}");
                    online = now;
                }
                try {
                    Thread.sleep(20);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }, "tmc-probe-watcher");
        watcher.setDaemon(true);
        watcher.start();

        boolean finished = done.await(timeoutS, TimeUnit.SECONDS);
        if (finished) {
            long idleDeadline = System.currentTimeMillis() + 5000;
            while (!client.workersIdle() && System.currentTimeMillis() < idleDeadline) {
                Thread.sleep(10);
            }
            Thread.sleep(lingerMs);
        }
        emit("{\"event\":\"" + (finished ? "done" : "timeout") + "\""
                + ",\"received\":" + received.get() + ",\"distinct\":" + seen.size()
                + ",\"ok\":" + handled.size() + ",\"failed\":" + failed.get()
                + ",\"redelivered\":" + redelivered.get() + ",\"online\":" + client.isOnline() + "}");
        watcher.interrupt();
        watcher.join(1000);  // so the probe's own close() is not reported as "offline"
        client.close();
        emit("{\"event\":\"closed\"}");
        System.exit(finished ? 0 : 3);
    }
}
