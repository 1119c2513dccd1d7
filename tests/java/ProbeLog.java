import org.apache.commons.logging.Log;

/**
 * The SDK's commons-logging output as probe events on stdout ({@code {"event":"log",...}}).
 *
 * <p>Selected with {@code -Dorg.apache.commons.logging.Log=ProbeLog}. Both the TMC layer and
 * the SDK's WebSocket layer ("toplink", which logs through commons-logging when log4j is not
 * on the class path) end up here, so a failed session, a decoder exception or a dropped
 * confirm shows in the probe's output next to the events it explains. Levels below
 * {@code -Dtmcprobe.log} (trace, debug, info, warn, error; default warn) are dropped.
 */
public final class ProbeLog implements Log {
    private static final int TRACE = 0;
    private static final int DEBUG = 1;
    private static final int INFO = 2;
    private static final int WARN = 3;
    private static final int ERROR = 4;
    private static final int FATAL = 5;
    private static final String[] NAMES = {"trace", "debug", "info", "warn", "error", "fatal"};
    private static final int MAX_TEXT = 300;
    private static final int THRESHOLD = threshold(System.getProperty("tmcprobe.log", "warn"));

    private final String name;

    public ProbeLog(String name) {
        this.name = name;
    }

    private static int threshold(String level) {
        for (int i = 0; i < NAMES.length; i++) {
            if (NAMES[i].equalsIgnoreCase(level)) {
                return i;
            }
        }
        return WARN;
    }

    private void log(int level, Object message, Throwable error) {
        if (level < THRESHOLD) {
            return;
        }
        StringBuilder line = new StringBuilder();
        line.append("{\"event\":\"log\",\"level\":\"").append(NAMES[level]).append('"');
        line.append(",\"logger\":").append(TmcProbe.quote(name));
        String text = String.valueOf(message);
        if (text.length() > MAX_TEXT) {  // "confirm message fail: {...}" carries the whole message
            text = text.substring(0, MAX_TEXT) + "...";
        }
        line.append(",\"text\":").append(TmcProbe.quote(text));
        if (error != null) {
            line.append(",\"error\":").append(TmcProbe.quote(TmcProbe.describe(error)));
        }
        TmcProbe.emit(line.append('}').toString());
    }

    @Override public boolean isTraceEnabled() { return THRESHOLD <= TRACE; }
    @Override public boolean isDebugEnabled() { return THRESHOLD <= DEBUG; }
    @Override public boolean isInfoEnabled() { return THRESHOLD <= INFO; }
    @Override public boolean isWarnEnabled() { return THRESHOLD <= WARN; }
    @Override public boolean isErrorEnabled() { return THRESHOLD <= ERROR; }
    @Override public boolean isFatalEnabled() { return THRESHOLD <= FATAL; }

    @Override public void trace(Object message) { log(TRACE, message, null); }
    @Override public void trace(Object message, Throwable t) { log(TRACE, message, t); }
    @Override public void debug(Object message) { log(DEBUG, message, null); }
    @Override public void debug(Object message, Throwable t) { log(DEBUG, message, t); }
    @Override public void info(Object message) { log(INFO, message, null); }
    @Override public void info(Object message, Throwable t) { log(INFO, message, t); }
    @Override public void warn(Object message) { log(WARN, message, null); }
    @Override public void warn(Object message, Throwable t) { log(WARN, message, t); }
    @Override public void error(Object message) { log(ERROR, message, null); }
    @Override public void error(Object message, Throwable t) { log(ERROR, message, t); }
    @Override public void fatal(Object message) { log(FATAL, message, null); }
    @Override public void fatal(Object message, Throwable t) { log(FATAL, message, t); }
}
