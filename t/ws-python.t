# Interoperability with a WebSocket client we did not write: Python's
# `websockets` library, against examples/04-websocket-echo under
# bin/pagi-server, and against a small app that negotiates a subprotocol and
# reports what it received. Skips when python3 or websockets is missing,
# except under CI=true (./setup.sh prepares them there), where that fails.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli stderr_of wait_until);
use File::Temp ();
use JSON::PP ();
use POSIX ();

my $ci = ($ENV{CI} // '') eq 'true';

sub skip_or_fail {
    my ($why) = @_;
    if ($ci) {
        fail("CI=true: the Python interoperability test must run here: $why");
        done_testing;
        exit;
    }
    plan skip_all => $why;
}

# --- The client: one Python script, written to a temp file. -------------------
# Works with websockets 10+ (legacy API) and 13+ (websockets.asyncio).
my $PY = <<'PYTHON';
import asyncio, json, os, sys
import websockets
try:
    from websockets.asyncio.client import connect
except ImportError:
    from websockets import connect

TEXT = "h\u00e9llo w\u00f6rld \u2713 \U0001F600 \u65e5\u672c\u8a9e"

async def recv(ws):
    return await asyncio.wait_for(ws.recv(), 10)

async def echo(url):
    r = {}
    async with connect(url, max_size=None, ping_interval=None, close_timeout=5) as ws:
        await ws.send(TEXT)
        got = await recv(ws)
        r["text"] = got
        r["text_is_str"] = isinstance(got, str)

        data = bytes(range(256)) * 4 + b"\x00\xff"
        await ws.send(data)
        got = await recv(ws)
        r["binary_equal"] = got == data
        r["binary_is_bytes"] = isinstance(got, bytes)

        big = os.urandom(1 << 20)
        await ws.send(big)
        got = await recv(ws)
        r["big_binary_len"] = len(got)
        r["big_binary_equal"] = got == big

        bigtext = ("\u00e9t\u00e9 \u2713 " * 150000)[:700000]    # about 1.2 MB as UTF-8
        await ws.send(bigtext)
        got = await recv(ws)
        r["big_text_bytes"] = len(bigtext.encode("utf-8"))
        r["big_text_equal"] = got == bigtext

        async def text_fragments():
            for part in ["frag-one ", "fr\u00e4g-two ", "frag-three \u2713"]:
                yield part
        await ws.send(text_fragments())
        r["fragmented_text"] = await recv(ws)

        async def byte_fragments():
            for part in [b"\x01\x02", b"", b"\x03" * 70000]:
                yield part
        await ws.send(byte_fragments())
        got = await recv(ws)
        r["fragmented_binary_equal"] = got == b"\x01\x02" + b"\x03" * 70000

        pongs = 0
        for payload in [b"", b"ping-data", b"x" * 125]:
            waiter = await ws.ping(payload)
            await asyncio.wait_for(waiter, 10)
            pongs += 1
        r["pongs"] = pongs

        # Many small messages in flight at once come back complete and in order.
        for i in range(200):
            await ws.send("msg %d" % i)
        got = [await recv(ws) for _ in range(200)]
        r["in_order"] = got == ["msg %d" % i for i in range(200)]

        await ws.close(code=4000, reason="bye")
        r["close_code"] = ws.close_code
        r["close_reason"] = ws.close_reason
    return r

async def subprotocol(url):
    r = {}
    async with connect(url, subprotocols=["chat", "superchat"], ping_interval=None) as ws:
        r["chosen"] = ws.subprotocol
        r["offered_seen_by_app"] = await recv(ws)
        await ws.send("hello")
        r["echo"] = await recv(ws)
        await ws.close(code=4000, reason="bye")
        r["close_code"] = ws.close_code
        r["close_reason"] = ws.close_reason
    async with connect(url, ping_interval=None) as ws:
        r["none_offered_chosen"] = ws.subprotocol
        r["none_offered_seen_by_app"] = await recv(ws)
    return r

async def main():
    mode, url = sys.argv[1], sys.argv[2]
    r = await {"echo": echo, "subprotocol": subprotocol}[mode](url)
    r["websockets_version"] = websockets.__version__
    print(json.dumps(r))

asyncio.run(main())
PYTHON

# The subprotocol app: accepts 'superchat' when offered, first tells the
# client what the scope listed, echoes, and logs the disconnect to STDERR.
my $APP = <<'PERL';
use strict;
use warnings;
use Future::AsyncAwait;
async sub app {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'websocket';
    my $event = await $receive->();
    my @offered = @{ $scope->{subprotocols} || [] };
    await $send->({ type => 'websocket.accept',
                    (grep { $_ eq 'superchat' } @offered) ? (subprotocol => 'superchat') : () });
    await $send->({ type => 'websocket.send', text => 'offered:' . join(',', @offered) });
    while (1) {
        $event = await $receive->();
        if ($event->{type} eq 'websocket.disconnect') {
            print STDERR "app saw disconnect code=$event->{code} reason=" . ($event->{reason} // '') . "\n";
            last;
        }
        await $send->({ type => 'websocket.send', text => $event->{text} }) if defined $event->{text};
    }
}
\&app;
PERL

my $python = `sh -c 'command -v python3' 2>/dev/null`;
chomp $python;
skip_or_fail('python3 not found (install it, then ./setup.sh --websocket-clients)') unless $python;
system('sh', '-c', '"$0" -c "import websockets" >/dev/null 2>&1', $python) == 0
    or skip_or_fail("python3 ($python) cannot import websockets (./setup.sh --websocket-clients, or python3 -m pip install websockets)");

my $dir = File::Temp->newdir;
my $script = "$dir/client.py";
my $app = "$dir/app.pl";
for ([ $script, $PY ], [ $app, $APP ]) {
    open my $fh, '>:utf8', $_->[0] or die "$_->[0]: $!";
    print {$fh} $_->[1];
    close $fh or die "$_->[0]: $!";
}

# Runs the client; returns its decoded JSON, or undef after diagnosing why not.
sub run_client {
    my ($mode, $port) = @_;
    my $pid = open(my $out, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        { exec $python, $script, $mode, "ws://127.0.0.1:$port/" }
        POSIX::_exit(127);
    }
    my $output = do { local $/; <$out> } // '';
    close $out;
    my $status = $?;
    my ($line) = grep { /^\{/ } split /\n/, $output;
    my $r = $status == 0 && $line ? eval { JSON::PP->new->utf8->decode($line) } : undef;
    diag("python client ($mode) exit status $status:\n$output") unless $r;
    return $r;
}

subtest 'examples/04-websocket-echo with Python websockets' => sub {
    my $child = start_cli(['examples/04-websocket-echo/app.pl']);
    ok($child->{ready}, 'pagi-server runs the echo example') or do { diag(stderr_of($child)); return };
    my $r = run_client(echo => $child->{port}) || {};
    note("websockets $r->{websockets_version}") if $r->{websockets_version};
    is($r->{text}, "h\x{e9}llo w\x{f6}rld \x{2713} \x{1F600} \x{65e5}\x{672c}\x{8a9e}",
        'non-ASCII text comes back as the same characters');
    ok($r->{text_is_str}, 'as a text message');
    ok($r->{binary_equal}, 'binary (all 256 byte values) comes back unchanged');
    ok($r->{binary_is_bytes}, 'as a binary message');
    is($r->{big_binary_len}, 1 << 20, 'a 1 MiB binary message comes back whole');
    ok($r->{big_binary_equal}, 'and unchanged');
    cmp_ok($r->{big_text_bytes} // 0, '>', 1 << 20, 'a text message over 1 MB of UTF-8');
    ok($r->{big_text_equal}, 'comes back unchanged');
    is($r->{fragmented_text}, "frag-one fr\x{e4}g-two frag-three \x{2713}",
        'a text message sent in three fragments arrives as one message');
    ok($r->{fragmented_binary_equal}, 'so does a fragmented binary message (with an empty fragment)');
    is($r->{pongs}, 3, 'every ping (empty, short, 125 bytes) is answered by a pong');
    ok($r->{in_order}, '200 messages in flight come back complete and in order');
    is($r->{close_code}, 4000, 'the client closes with 4000 and the server answers the close with 4000');
    is($r->{close_reason}, 'bye', "and the reason 'bye'");
    is(stop_cli($child), 0, 'the server exits 0 on SIGTERM');
    unlike($child->{stderr}, qr/\berror\b/i, 'no errors logged') or diag($child->{stderr});
};

subtest 'subprotocol negotiation and close code reaching the app' => sub {
    my $child = start_cli([$app]);
    ok($child->{ready}, 'pagi-server runs the subprotocol app') or do { diag(stderr_of($child)); return };
    my $r = run_client(subprotocol => $child->{port}) || {};
    is($r->{offered_seen_by_app}, 'offered:chat,superchat', "the scope's subprotocols are the client's offer, in order");
    is($r->{chosen}, 'superchat', "the client sees the app's choice, 'superchat'");
    is($r->{echo}, 'hello', 'messages flow after the negotiation');
    is($r->{close_code}, 4000, 'close 4000 is answered with 4000');
    is($r->{close_reason}, 'bye', "and 'bye'");
    is($r->{none_offered_seen_by_app}, 'offered:', 'without an offer the scope has no subprotocols');
    ok(exists $r->{none_offered_chosen} && !defined $r->{none_offered_chosen}, 'and none is chosen');
    ok(wait_until(sub { stderr_of($child) =~ /code=4000 reason=bye/ }, 5),
        'the app got websocket.disconnect with code 4000 and reason bye') or diag(stderr_of($child));
    is(stop_cli($child), 0, 'the server exits 0 on SIGTERM');
};

done_testing;
