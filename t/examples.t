# Every examples/*/app.pl runs under bin/pagi-server and does what its header
# comment says, answering the request its curl line suggests with the exact
# status and body; examples/08-tls-introspection also runs over TLS (with a
# throwaway CA made by the openssl command); examples/09-psgi-bridge needs
# Plack (libplack-perl) and PAGI::App::WrapPSGI. Under CI=true a missing openssl
# or IO::Socket::SSL is a failure, not a skip.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT start_cli stop_cli http_raw http_get_cli stderr_of wait_until);
use PAGI::Test::WebSocket qw(ws_connect ws_open OP_TEXT OP_BINARY);
use PAGI::Test::HTTP qw(sse_events sse_stream);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time);

my $CI = ($ENV{CI} // '') eq 'true';
$SIG{PIPE} = 'IGNORE';

sub source_of {
    my ($name) = @_;
    open my $fh, '<', ROOT() . "/examples/$name/app.pl" or die "examples/$name/app.pl: $!";
    local $/;
    return scalar <$fh>;
}


# Reads until EOF (or $timeout), noting when each read arrived.
sub timed_read {
    my ($port, $request, $timeout) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5) or return;
    $sock->autoflush(1);
    print {$sock} $request;
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($timeout // 10);
    my @reads;
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        my $n = sysread $sock, my $buf, 65536;
        last unless $n;
        push @reads, [ time, $buf ];
    }
    return @reads;
}

sub post {
    my ($port, $path, $body, @headers) = @_;
    my $framing = grep({ /^transfer-encoding:/i } @headers) ? '' : "Content-Length: " . length($body) . "\r\n";
    my ($r) = parse_responses(http_raw($port,
        "POST $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n$framing"
        . join('', map { "$_\r\n" } @headers) . "\r\n$body"));
    return $r;
}

sub get {
    my ($port, $path, @headers) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        . join('', map { "$_\r\n" } @headers) . "\r\n"));
    return $r;
}

# The session cookie a response sets, as a Cookie header ('' when it sets none).
sub session_cookie {
    my ($res) = @_;
    my ($set) = grep { /^pagi_session=/ } map { $_->[0] eq 'set-cookie' ? $_->[1] : () } @{ $res ? $res->{headers} : [] };
    return defined $set && $set =~ /^(pagi_session=[^;]+)/ ? "Cookie: $1" : '';
}

# A multipart/form-data body of [name => value] and [name => {filename, content}].
sub multipart {
    my (@parts) = @_;
    my $boundary = 'ExampleBoundary' . int rand 1e9;
    my $body = '';
    while (my ($name, $v) = splice @parts, 0, 2) {
        $body .= "--$boundary\r\n";
        $body .= ref $v
            ? qq{Content-Disposition: form-data; name="$name"; filename="$v->{filename}"\r\nContent-Type: text/plain\r\n\r\n$v->{content}\r\n}
            : qq{Content-Disposition: form-data; name="$name"\r\n\r\n$v\r\n};
    }
    return ("$body--$boundary--\r\n", "Content-Type: multipart/form-data; boundary=$boundary");
}


# What to check for each example, by directory; others get a generic GET.
my %CHECK = (
    '01-hello-http' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'status 200');
        is($res && $res->{body}, "Hello, World!\n", 'says hello');
    },
    '02-streaming-response' => sub {
        my ($child) = @_;
        my @reads = timed_read($child->{port}, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        my $raw = join '', map { $_->[1] } @reads;
        my ($res) = parse_responses($raw);
        is($res && $res->{status}, 200, 'status 200');
        ok($res && $res->{chunked}, 'the response is chunked');
        ok($res && !defined $res->{header}{'content-length'}, 'without content-length');
        ok($res && !$res->{incomplete}, 'ends with the terminating chunk');
        is($res && $res->{body}, join('', map { "piece $_ of 5\n" } 1 .. 5) . "done\n", 'all pieces arrive, in order');
        my @pieces = $raw =~ /\r\n([0-9a-f]+)\r\npiece \d/gi;
        is(scalar @pieces, 5, 'each piece is a chunk of its own');
        # Streamed, not buffered: the first piece comes well before the end.
        my ($first) = grep { $_->[1] =~ /piece 1 of/ } @reads;
        my ($last)  = grep { $_->[1] =~ /done\n/ } @reads;
        ok($first && $last && $last->[0] - $first->[0] >= 0.3,
            'the first piece arrives at least 0.3 s before the last')
            or diag(sprintf 'reads at %s', join ', ', map { sprintf '%.3f', $_->[0] - $reads[0][0] } @reads);
    },
    '03-request-body' => sub {
        my ($child) = @_;
        my $res = post($child->{port}, '/echo', 'hello body');
        is($res && $res->{status}, 200, 'status 200');
        is($res && $res->{body}, "POST /echo: received 10 bytes\nhello body", 'length and echo of a small body');

        my $big = join '', map { chr(65 + $_ % 26) x 1000 } 0 .. 299;    # 300 KB, several pieces
        my $chunked = join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } unpack '(a50000)*', $big) . "0\r\n\r\n";
        $res = post($child->{port}, '/big', $chunked, 'Transfer-Encoding: chunked');
        is($res && $res->{status}, 200, 'chunked upload: status 200');
        my ($head, $echo) = split /\n/, ($res && $res->{body}) // '', 2;
        is($head, 'POST /big: received 300000 bytes', 'a 300 KB chunked body is read whole');
        ok(defined $echo && $echo eq $big, 'and echoed back unchanged');

        $res = post($child->{port}, '/empty', '');
        is($res && $res->{body}, "POST /empty: received 0 bytes\n", 'an empty body');
    },
    '04-websocket-echo' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'plain GET: status 200');
        is($res && $res->{body}, "Connect with a WebSocket client.\n", 'with the hint');

        # A minimal raw client: the handshake, one masked text frame, a close.
        my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 5)
            or return fail("connect: $@");
        $sock->autoflush(1);
        my $sel = IO::Select->new($sock);
        my $buf = '';
        my $read_until = sub {    # reads into $buf until $cond holds, EOF or 5 s
            my ($cond) = @_;
            my $deadline = time + 5;
            until ($cond->()) {
                my $left = $deadline - time;
                last if $left <= 0 || !$sel->can_read($left);
                sysread($sock, $buf, 65536, length $buf) or last;
            }
        };
        my $frame = sub {    # client frames are masked; payloads here stay under 126 bytes
            my ($opcode, $data) = @_;
            my $mask = "\x37\xfa\x21\x3d";
            return chr(0x80 | $opcode) . chr(0x80 | length $data) . $mask
                . ($data ^ substr($mask x 32, 0, length $data));
        };
        print {$sock} "GET / HTTP/1.1\r\nHost: 127.0.0.1:$child->{port}\r\nUpgrade: websocket\r\n"
            . "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        $read_until->(sub { $buf =~ /\r\n\r\n/ });
        my ($head) = $buf =~ /\A(.*?\r\n)\r\n/s;
        $buf =~ s/\A.*?\r\n\r\n//s;
        like($head // '', qr{\AHTTP/1\.1 101 }, 'the upgrade is answered with 101') or diag($head // $buf);
        like($head // '', qr{^sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r$}mi,
            'with the Sec-WebSocket-Accept of RFC 6455 section 1.3');

        my $text = "h\xc3\xa9llo, echo";    # UTF-8 bytes
        print {$sock} $frame->(0x1, $text);
        $read_until->(sub { length $buf >= 2 + length $text });
        is(substr($buf, 0, 2 + length $text, ''), "\x81" . chr(length $text) . $text,
            'the text frame comes back unmasked and unchanged');

        print {$sock} $frame->(0x8, pack('n', 1000));
        $read_until->(sub { length $buf >= 4 });
        is(substr($buf, 0, 4), "\x88\x02\x03\xe8", 'a close 1000 is answered with close 1000');
        $read_until->(sub { 0 });
        is(length $buf, 4, 'then the server closes the connection');
    },
    '06-lifespan-state' => sub {
        my ($child) = @_;
        my @bodies = map { my $r = http_get_cli($child->{port}, '/'); $r && $r->{status} == 200 ? $r->{body} : '' } 1 .. 2;
        my ($n1, $t1) = $bodies[0] =~ /\Arequest (\d+) since startup at (\d+) /;
        my ($n2, $t2) = $bodies[1] =~ /\Arequest (\d+) since startup at (\d+) /;
        is($n1, 1, 'first request counts 1') or diag("got: $bodies[0]");
        is($n2, 2, 'second request counts 2: the counter in state is shared');
        ok($t1 && abs(time - $t1) < 60, 'the start time from lifespan startup is in state');
        is($t2, $t1, 'both requests see the same startup state');
        unlike(stderr_of($child), qr/lifespan not supported/i, 'the server ran the lifespan protocol');
    },
    '05-sse-broadcaster' => sub {
        my ($child) = @_;
        my ($page) = source_of('05-sse-broadcaster') =~ /^my \$PAGE = <<'HTML';\n(.*?^)HTML\n/ms;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'GET /: status 200');
        is($res && $res->{header}{'content-type'}, 'text/html; charset=utf-8', 'an HTML page');
        is($res && $res->{body}, $page, 'the page of the app');

        my $sse = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 5)
            or return fail("connect: $@");
        syswrite $sse, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        my ($buf, $sel) = ('', IO::Select->new($sse));
        my $read_until = sub {
            my ($cond, $timeout) = @_;
            my $deadline = time + $timeout;
            until ($cond->()) {
                my $left = $deadline - time;
                return 0 if $left <= 0 || !$sel->can_read($left);
                sysread($sse, $buf, 65536, length $buf) or return 0;
            }
            return 1;
        };
        my $events = sub { my ($b) = $buf =~ /\r\n\r\n(.*)\z/s; sse_events($b // '') };
        ok($read_until->(sub { grep { ($_->{data} // '') =~ /^welcome/ } $events->() }, 10), 'the stream opens')
            or diag($buf);
        my ($head) = $buf =~ /\A(.*?\r\n)\r\n/s;
        like($head // '', qr{\AHTTP/1\.1 200 }, '/events: status 200');
        like($head // '', qr{^content-type: text/event-stream\b}mi, 'as text/event-stream');
        my ($welcome) = $events->();
        is($welcome->{event}, 'message', 'the first event is a message');
        is($welcome->{data}, 'welcome (1 listening)', 'the welcome, counting this one listener');

        my $published = post($child->{port}, '/publish', 'hello everyone');
        is($published && $published->{status}, 202, 'POST /publish: status 202');
        is($published && $published->{body}, "sent to 1 listeners\n", 'sent to the one listener');
        ok($read_until->(sub { grep { ($_->{data} // '') eq 'hello everyone' } $events->() }, 10),
            'the published message arrives on the stream');
        my ($message) = grep { ($_->{data} // '') eq 'hello everyone' } $events->();
        is($message && $message->{event}, 'message', 'as a message event');
        like($message && $message->{id}, qr/\A\d+\z/, 'with a numeric id');
        ok($read_until->(sub { grep { ($_->{event} // '') eq 'clock' } $events->() }, 10), 'a clock event arrives');
        my ($clock) = grep { ($_->{event} // '') eq 'clock' } $events->();
        like($clock && $clock->{data}, qr/\A\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\z/, 'carrying the time');
        close $sse;
    },
    '09-psgi-bridge' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'GET /: status 200, from the PSGI app');
        is($res && $res->{body}, "This page comes from a PSGI app; the WebSocket echo is at /ws.\n", 'its page');
        is($res && $res->{header}{'content-length'}, 63, 'with the Content-Length of Plack::Middleware::ContentLength');
        $res = post($child->{port}, '/greet', 'name=Ada', 'Content-Type: application/x-www-form-urlencoded');
        is($res && $res->{status}, 200, 'POST /greet: status 200');
        is($res && $res->{body}, "Hello, Ada, from the PSGI app!\n", 'Plack::Request read the form');
        $res = http_get_cli($child->{port}, '/greet');
        is($res && $res->{status}, 405, 'GET /greet: status 405');
        is($res && $res->{body}, "POST a name to /greet\n", 'with the hint');

        # The WebSocket endpoint beside it, written in PAGI.
        my ($ws) = eval { ws_connect($child->{port}, path => '/ws')->get };
        ok($ws, 'a WebSocket handshake on /ws is accepted') or return diag($@);
        $ws->send_text("h\x{e9}llo, echo");
        my $frame = eval { $ws->next_frame(5)->get };
        is($frame && $frame->{opcode}, OP_TEXT, 'a text frame comes back');
        is($frame && $frame->{payload}, "h\xc3\xa9llo, echo", 'unchanged (UTF-8 bytes)');
        $ws->send_binary("\x00\xff\x10");
        $frame = eval { $ws->next_frame(5)->get };
        is($frame && $frame->{opcode}, OP_BINARY, 'a binary frame comes back');
        is($frame && $frame->{payload}, "\x00\xff\x10", 'unchanged');
        $ws->send_close(1000);
        my $close = eval { $ws->wait_close(5)->get };
        is($close && $close->{code}, 1000, 'a close 1000 is answered with close 1000');
        ok(eval { $ws->wait_eof(5)->get; 1 }, 'then the server closes the connection');

        my $other = eval { ws_open($child->{port}, path => '/elsewhere')->response->get };
        is($other && $other->{status}, 403, 'a WebSocket handshake elsewhere is refused with 403');
    },
    'simple-01-hello' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'GET /: status 200');
        is($res && $res->{body}, 'Hello, World!', 'says hello');
        $res = http_get_cli($child->{port}, '/users/42');
        is($res && $res->{status}, 200, 'GET /users/42: status 200');
        is($res && $res->{body}, '{"user_id":"42"}', 'the id as JSON');
        $res = post($child->{port}, '/api/data', '{"a":[1,2]}', 'Content-Type: application/json');
        is($res && $res->{status}, 200, 'POST /api/data: status 200');
        is($res && $res->{body}, '{"received":{"a":[1,2]},"status":"ok"}', 'echoes the JSON body');
        my ($one) = eval { ws_connect($child->{port}, path => '/chat')->get };
        my ($two) = eval { ws_connect($child->{port}, path => '/chat')->get };
        ok($one && $two, 'two WebSocket clients on /chat') or return diag($@);
        # A round trip proves both are subscribed before the real message.
        $two->send_text('ready');
        my $frame = eval { $one->next_frame(15)->get };
        is($frame && $frame->{payload}, 'Someone said: ready', 'the first client hears the second');
        $one->send_text('hi');
        $frame = eval { $two->next_frame(15)->get };
        is($frame && $frame->{payload}, 'Someone said: hi', 'and the second hears the first');
        is($one->pending, 0, 'nobody hears their own message');
        $_->send_close(1000) for $one, $two;
    },
    'simple-02-forms' => sub {
        my ($child) = @_;
        my $port = $child->{port};
        my $head = qq{<!doctype html>\n<meta charset="utf-8">\n<title>PAGI::Simple forms</title>\n<h1>Forms</h1>\n};
        my $login_form = qq{<form method="post" action="/login">\n<label>Name <input name="name" maxlength="40"></label>\n}
            . qq{<button>Sign in</button>\n</form>\n};
        my $signed_in = qq{<p>Signed in as <b class="user">Ada</b>.</p>\n}
            . qq{<form method="post" action="/logout"><button>Sign out</button></form>\n}
            . qq{<form method="post" action="/upload" enctype="multipart/form-data">\n}
            . qq{<label>File <input type="file" name="file"></label>\n}
            . qq{<label>Note <input name="note" maxlength="200"></label>\n<button>Upload</button>\n</form>\n};
        my $res = get($port, '/');
        is($res && $res->{status}, 200, 'GET /: status 200');
        is($res && $res->{header}{'content-type'}, 'text/html; charset=utf-8', 'an HTML page');
        is($res && $res->{body}, $head . $login_form, 'with the sign-in form and no flash');

        my $form = 'Content-Type: application/x-www-form-urlencoded';
        $res = post($port, '/login', 'name=+', $form);
        is($res && "$res->{status} $res->{header}{location}", '303 /', 'an empty name: 303 back to /');
        $res = get($port, '/', session_cookie($res));
        is($res && $res->{body}, $head . qq{<p class="flash error">name: give 1 to 40 printable characters.</p>\n} . $login_form,
            'the next page says what is wrong with the name');

        $res = post($port, '/login', 'name=Ada', $form);
        is($res && "$res->{status} $res->{header}{location}", '303 /', 'POST /login: 303 to /');
        my $cookie = session_cookie($res);
        like(join("\n", map { $_->[1] } grep { $_->[0] eq 'set-cookie' } @{ $res ? $res->{headers} : [] }),
            qr/^pagi_session=s1\.[\w-]+\.[\w-]+; path=\/; max-age=\d+; SameSite=Lax; HttpOnly$/m,
            'sets a signed session cookie, HttpOnly and SameSite=Lax');
        $res = get($port, '/', $cookie);
        is($res && $res->{status}, 200, 'GET / with the session: status 200');
        is($res && $res->{body}, $head . qq{<p class="flash info">Welcome, Ada!</p>\n} . $signed_in,
            'the flash is shown once, and the user is signed in');
        my $after_flash = session_cookie($res);
        ok($after_flash && $after_flash ne $cookie, 'showing the flash rewrites the session cookie');
        $res = get($port, '/', $after_flash);
        is($res && $res->{body}, $head . $signed_in, 'the next page has no flash: it was one-shot');
        $res = get($port, '/', 'Cookie: pagi_session=s1.eyJkIjp7InVzZXIiOiJFdmUifX0.AAAA');
        is($res && $res->{body}, $head . $login_form, 'a forged cookie is ignored');

        my $content = "line one\nline two\n";
        my ($body, $type) = multipart(note => 'my <notes>', file => { filename => 'dir/notes.txt', content => $content });
        $res = post($port, '/upload', $body, $type, $after_flash);
        is($res && "$res->{status} $res->{header}{location}", '303 /', 'POST /upload (multipart): 303 to /');
        $res = get($port, '/', session_cookie($res));
        require Digest::SHA;
        is($res && $res->{body}, $head . qq{<p class="flash info">Uploaded notes.txt (18 bytes).</p>\n} . $signed_in
            . qq{<ul class="files">\n<li><a href="/files/1">notes.txt</a> (18 bytes, sha256 } . Digest::SHA::sha256_hex($content)
            . qq{): my &#60;notes&#62;</li>\n</ul>\n}, 'the flash reports the upload, and the file is listed');
        $res = get($port, '/files/1', $after_flash);
        is($res && $res->{status}, 200, 'GET /files/1: status 200');
        is($res && $res->{body}, $content, 'the uploaded bytes');
        is($res && $res->{header}{'content-disposition'}, 'attachment; filename="notes.txt"', 'as an attachment');
        is($res && $res->{header}{'content-type'}, 'application/octet-stream', 'of opaque bytes');
        $res = get($port, '/files/1');
        is($res && "$res->{status} $res->{body}", '404 Not Found', 'not without the session');

        ($body, $type) = multipart(note => '', file => { filename => 'big.txt', content => 'x' x (256 * 1024 + 1) });
        $res = post($port, '/upload', $body, $type, $after_flash);
        is($res && "$res->{status} $res->{body}", '413 Payload Too Large', 'an upload over 256 KiB: 413');
        ($body, $type) = multipart(note => 'no file');
        $res = post($port, '/upload', $body, $type, $after_flash);
        $res = get($port, '/', session_cookie($res));
        is($res && $res->{body}, $head . qq{<p class="flash error">file: choose a file to upload.</p>\n} . $signed_in
            . qq{<ul class="files">\n<li><a href="/files/1">notes.txt</a> (18 bytes, sha256 } . Digest::SHA::sha256_hex($content)
            . qq{): my &#60;notes&#62;</li>\n</ul>\n}, 'an upload without a file: the flash says so');

        $res = post($port, '/logout', '', $after_flash);
        is($res && "$res->{status} $res->{header}{location}", '303 /', 'POST /logout: 303 to /');
        $res = get($port, '/', session_cookie($res));
        is($res && $res->{body}, $head . qq{<p class="flash info">Signed out.</p>\n} . $login_form, 'signed out, with a flash');
    },
    'simple-03-websocket' => sub {
        my ($child) = @_;
        my $port = $child->{port};
        my ($page) = source_of('simple-03-websocket') =~ /^my \$PAGE = <<'HTML';\n(.*?^)HTML\n/ms;
        my $res = get($port, '/');
        is($res && $res->{status}, 200, 'GET /: status 200');
        is($res && $res->{header}{'content-type'}, 'text/html; charset=utf-8', 'an HTML page');
        is($res && $res->{body}, $page, 'the chat page of the app');

        my ($ada) = eval { ws_connect($port, path => '/chat/lobby?name=Ada')->get };
        ok($ada, 'Ada joins /chat/lobby') or return diag($@);
        my $frame = eval { $ada->next_frame(15)->get };
        is($frame && $frame->{payload}, '{"members":["Ada"],"room":"lobby","type":"members"}', 'and gets the member list');
        my ($bob) = eval { ws_connect($port, path => '/chat/lobby?name=B%C3%B6b')->get };
        ok($bob, 'Böb joins too') or return diag($@);
        $frame = eval { $bob->next_frame(15)->get };
        is($frame && $frame->{payload}, "{\"members\":[\"Ada\",\"B\xc3\xb6b\"],\"room\":\"lobby\",\"type\":\"members\"}",
            'Böb gets both names (UTF-8)');
        $frame = eval { $ada->next_frame(15)->get };
        is($frame && $frame->{payload}, "{\"members\":[\"Ada\",\"B\xc3\xb6b\"],\"name\":\"B\xc3\xb6b\",\"type\":\"join\"}",
            'Ada hears that Böb joined');
        $res = get($port, '/rooms');
        is($res && "$res->{status} $res->{body}", "200 {\"lobby\":[\"Ada\",\"B\xc3\xb6b\"]}", 'GET /rooms shows who is where');

        $ada->send_text("hi \x{263a}");
        my $said = "{\"name\":\"Ada\",\"text\":\"hi \xe2\x98\xba\",\"type\":\"message\"}";
        $frame = eval { $bob->next_frame(15)->get };
        is($frame && $frame->{payload}, $said, 'a message reaches the other member');
        $frame = eval { $ada->next_frame(15)->get };
        is($frame && $frame->{payload}, $said, 'and comes back to the sender');

        my ($dup) = eval { ws_connect($port, path => '/chat/lobby?name=Ada')->get };
        my $close = $dup && eval { $dup->wait_close(15)->get };
        is($close && "$close->{code} $close->{reason}", '4409 name: already taken in this room', 'a taken name: closed with 4409');
        my ($anon) = eval { ws_connect($port, path => '/chat/lobby')->get };
        $close = $anon && eval { $anon->wait_close(15)->get };
        is($close && $close->{code}, 4400, 'no name: closed with 4400');

        $bob->send_close(1000);
        $frame = eval { $ada->next_frame(15)->get };
        is($frame && $frame->{payload}, "{\"members\":[\"Ada\"],\"name\":\"B\xc3\xb6b\",\"type\":\"leave\"}", 'Ada hears that Böb left');
        is($ada->pending, 0, 'and nothing else');
        $ada->send_close(1000);
        ok(eval { $ada->wait_eof(10)->get; 1 }, 'Ada leaves');
        ok(wait_until(sub { my $r = get($port, '/rooms'); $r && $r->{body} eq '{}' }, 10), 'then the room is gone from /rooms');
    },
    'simple-04-sse' => sub {
        my ($child) = @_;
        my $port = $child->{port};
        my ($page) = source_of('simple-04-sse') =~ /^my \$PAGE = <<'HTML';\n(.*?^)HTML\n/ms;
        my $res = get($port, '/');
        is($res && $res->{status}, 200, 'GET /: status 200');
        is($res && $res->{body}, $page, 'the feed page of the app');

        my ($read, $sock, $buf) = sse_stream($port, '/events/news');
        ok($read && $read->(sub { grep { ($_->{event} // '') eq 'subscribed' } @_ }, 15), '/events/news opens')
            or return diag($buf ? $$buf : "connect: $@");
        like($$buf, qr{\AHTTP/1\.1 200 .*^content-type: text/event-stream\r$}ms, 'status 200, text/event-stream');
        my ($first) = $read->();
        is($first->{data}, '{"channels":["news"]}', 'the first event names the channel');
        ok(!exists $first->{id}, 'and has no id');

        $res = post($port, '/publish/news', "caf\xc3\xa9 news");
        my ($id) = ($res && $res->{body} // '') =~ /\A\{"channel":"news","id":(\d+),"subscribers":1\}\z/;
        is($res && $res->{status}, 202, 'POST /publish/news: status 202');
        ok($id, 'answered with the event id and one subscriber') or diag($res && $res->{body});
        ok($read->(sub { grep { ($_->{event} // '') eq 'news' } @_ }, 15), 'the news event arrives');
        my ($news) = grep { ($_->{event} // '') eq 'news' } $read->();
        is($news && $news->{data}, "caf\xc3\xa9 news", 'with the published text');
        is($news && $news->{id}, $id, 'and the id POST answered');
        ok(!grep({ ($_->{event} // '') eq 'tick' } $read->()), 'no ticks on a stream that did not ask for them');
        close $sock;

        ($read, $sock, $buf) = sse_stream($port, '/events?channel=tick&channel=news', "Last-Event-ID: " . ($id - 1));
        ok($read && $read->(sub { grep { ($_->{event} // '') eq 'tick' } @_ }, 15), '?channel=tick&channel=news gets ticks')
            or return diag($buf ? $$buf : "connect: $@");
        my @events = $read->();
        is($events[0]{data}, '{"channels":["news","tick"]}', 'subscribed to both');
        is($events[1] && "$events[1]{event} $events[1]{id} $events[1]{data}", "news $id caf\xc3\xa9 news",
            'Last-Event-ID replays the missed news event first');
        my ($tick) = grep { ($_->{event} // '') eq 'tick' } @events;
        like($tick->{data}, qr/\A\{"n":\d+,"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\}\z/, 'a tick carries n and the time');
        cmp_ok($tick->{id}, '>', 0, 'and an id');
        close $sock;

        $res = post($port, '/publish/tick', 'x');
        is($res && "$res->{status} $res->{body}", '403 {"error":"channel: tick is published by the server"}', 'publishing to tick: 403');
        $res = post($port, '/publish/news', ' ');
        is($res && "$res->{status} $res->{body}", '400 {"error":"body: the text to publish is required"}', 'nothing to publish: 400');
    },
    'simple-05-rest' => sub {
        my ($child) = @_;
        my $port = $child->{port};
        my $res = post($port, '/books', '{"title":"Dune","year":1965}', 'Content-Type: application/json');
        is($res && $res->{status}, 201, 'POST /books: status 201');
        is($res && $res->{body}, '{"id":1,"title":"Dune","year":1965}', 'the created book');
        is($res && $res->{header}{location}, '/books/1', 'with its location');
        $res = http_get_cli($port, '/books');
        is($res && "$res->{status} $res->{body}", '200 [{"id":1,"title":"Dune","year":1965}]', 'GET /books lists it');
        $res = http_get_cli($port, '/books/1');
        is($res && "$res->{status} $res->{body}", '200 {"id":1,"title":"Dune","year":1965}', 'GET /books/1');
        $res = post($port, '/books', '{"year":"soon","colour":"red"}', 'Content-Type: application/json');
        is($res && $res->{status}, 422, 'invalid book: status 422');
        is($res && $res->{body}, '{"errors":{"colour":"is not a known field","title":"is required and must be a non-empty string",'
            . '"year":"must be an integer between 0 and 9999"}}', 'each bad field named');
        $res = post($port, '/books', '{"title":', 'Content-Type: application/json');
        is($res && $res->{status}, 400, 'malformed JSON: status 400');
        like($res && $res->{body}, qr/^\{"error":"Malformed JSON in request body: /, 'saying so');
        my ($r) = parse_responses(http_raw($port, "PATCH /books/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            . "Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"year\":1966}"));
        is($r && "$r->{status} $r->{body}", '200 {"id":1,"title":"Dune","year":1966}', 'PATCH updates one field');
        ($r) = parse_responses(http_raw($port, "DELETE /books/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        is($r && $r->{status}, 204, 'DELETE: status 204');
        $res = http_get_cli($port, '/books/1');
        is($res && "$res->{status} $res->{body}", '404 {"error":"no book with id 1"}', 'then it is gone: 404');
    },
    '10-chat-showcase' => sub {
        my ($child) = @_;
        my $port = $child->{port};
        my $file = sub { open my $fh, '<', ROOT() . "/examples/10-chat-showcase/public/$_[0]" or die $!; local $/; scalar <$fh> };
        my $res = get($port, '/');
        is($res && $res->{status}, 200, 'GET /: status 200');
        is($res && $res->{header}{'content-type'}, 'text/html; charset=utf-8', 'an HTML page');
        is($res && $res->{body}, $file->('index.html'), 'public/index.html');
        $res = get($port, '/chat.js');
        is($res && "$res->{status} " . ($res->{body} eq $file->('chat.js') ? 'same' : 'differs'), '200 same', 'GET /chat.js: the script');

        my ($read, $sock, $buf) = sse_stream($port, '/activity');
        ok($read && $read->(sub { grep { ($_->{event} // '') eq 'rooms' } @_ }, 15), 'the activity feed opens')
            or return diag($buf ? $$buf : "connect: $@");
        like($$buf, qr{\AHTTP/1\.1 200 .*^content-type: text/event-stream\r$}ms, 'as text/event-stream');
        is(($read->())[0]{data}, '{"rooms":{}}', 'its first event: no rooms yet');
        my $activity = sub {    # the feed's events after the first, as "event data"
            my ($n) = @_;
            $read->(sub { @_ > $n }, 15);
            return [ map { "$_->{event} $_->{data}" } (($read->())[ 1 .. $n ]) ];
        };

        my $join = sub {
            my ($room, $name) = @_;
            my ($ws) = eval { ws_connect($port, path => "/ws/$room?name=$name")->get };
            fail("$name joins $room: $@") unless $ws;
            return $ws;
        };
        my $next = sub { my $f = eval { $_[0]->next_frame(15)->get }; $f ? $f->{payload} : "(nothing: $@)" };
        my $ada = $join->('lobby', 'Ada') or return;
        is($next->($ada), '{"members":1,"name":"Ada","room":"lobby","type":"welcome"}', 'Ada is welcomed, alone in the lobby');
        my $bob = $join->('lobby', 'B%C3%B6b') or return;
        is($next->($bob), "{\"members\":2,\"name\":\"B\xc3\xb6b\",\"room\":\"lobby\",\"type\":\"welcome\"}",
            'Böb is welcomed, the second member');
        is($next->($ada), "{\"members\":2,\"name\":\"B\xc3\xb6b\",\"type\":\"join\"}", 'Ada hears Böb join, with the count');
        my $cat = $join->('kitchen', 'Cat') or return;
        is($next->($cat), '{"members":1,"name":"Cat","room":"kitchen","type":"welcome"}', 'Cat is alone in the kitchen');
        $res = get($port, '/api/rooms');
        is($res && "$res->{status} $res->{body}", '200 {"rooms":{"kitchen":1,"lobby":2}}', 'GET /api/rooms: members per room');

        $ada->send_text("hi \x{263a}");
        my $said = "{\"name\":\"Ada\",\"text\":\"hi \xe2\x98\xba\",\"type\":\"message\"}";
        is($next->($bob), $said, 'a message reaches the other member');
        is($next->($ada), $said, 'and the sender');
        $res = post($port, '/api/rooms/lobby/messages', 'tea is ready');
        is($res && "$res->{status} $res->{body}", '202 {"delivered":2,"room":"lobby"}', 'POST a message to the lobby: 202, 2 members');
        my $served = '{"name":"server","text":"tea is ready","type":"message"}';
        is($next->($ada), $served, 'Ada gets the server message');
        is($next->($bob), $served, 'so does Böb');
        $res = post($port, '/api/rooms/lobby/messages', ' ');
        is($res && "$res->{status} $res->{body}", '400 Bad Request: body: the text to send is required', 'an empty message: 400');

        $bob->send_close(1000);
        is($next->($ada), "{\"members\":1,\"name\":\"B\xc3\xb6b\",\"type\":\"leave\"}", 'Ada hears Böb leave: 1 member left');
        is($ada->pending, 0, 'and nothing else');
        is($cat->pending, 0, 'nothing of the lobby reached the kitchen');
        is_deeply($activity->(5), [
            'join {"members":1,"name":"Ada","room":"lobby"}',
            "join {\"members\":2,\"name\":\"B\xc3\xb6b\",\"room\":\"lobby\"}",
            'join {"members":1,"name":"Cat","room":"kitchen"}',
            'message {"members":2,"name":"Ada","room":"lobby"}',
            "leave {\"members\":1,\"name\":\"B\xc3\xb6b\",\"room\":\"lobby\"}",
        ], 'the activity feed saw every join, message and leave');

        my ($anon) = eval { ws_connect($port, path => '/ws/lobby')->get };
        my $close = $anon && eval { $anon->wait_close(15)->get };
        is($close && $close->{code}, 4400, 'no name: closed with 4400');
        for my $ws ($ada, $cat) {
            $ws->send_close(1000);
            ok(eval { $ws->wait_eof(10)->get; 1 }, 'a member leaves') or diag($@);
        }
        my $last;
        ok(wait_until(sub { $last = get($port, '/api/rooms'); $last && $last->{body} eq '{"rooms":{}}' }, 10),
            'once everyone left, no rooms are listed') or diag($last && $last->{body});
        close $sock;
    },
    '08-tls-introspection' => sub {
        my ($child) = @_;
        my $res = http_get_cli($child->{port}, '/');
        is($res && $res->{status}, 200, 'cleartext GET /: status 200');
        is($res && $res->{header}{'content-type'}, 'text/plain; charset=utf-8', 'plain text');
        is($res && $res->{body}, "scheme: http\nnot a TLS connection\n", 'the report says it is not TLS');
    },
);

my @apps = sort glob(ROOT() . '/examples/*/app.pl');
ok(scalar @apps >= 4, 'found the examples') or diag("found: @apps");

for my $app (@apps) {
    my ($name) = $app =~ m{/examples/([^/]+)/app\.pl\z};
    subtest "examples/$name" => sub {
        if ($name eq '09-psgi-bridge' && !eval { require Plack::Builder; 1 }) {
            return fail('CI=true and Plack is not installed: ./setup.sh installs libplack-perl') if $CI;
            plan skip_all => 'Plack is not installed (Debian package libplack-perl)';
        }
        open my $fh, '<', $app or die "$app: $!";
        my $source = do { local $/; <$fh> };
        like($source, qr/\A#/, 'starts with a comment');
        like($source, qr{^# Run: perl -Mblib bin/pagi-server examples/\Q$name\E/app\.pl --port 5000$}m,
            'which says how to run it');
        like($source, qr{^#\s+curl .*http://127\.0\.0\.1:5000/}m, 'and how to try it');

        my $child = start_cli(["examples/$name/app.pl"]);
        ok($child->{ready}, 'pagi-server starts it') or do { diag(stderr_of($child)); return };
        if (my $check = $CHECK{$name}) {
            $check->($child);
        }
        else {
            fail("t/examples.t has no check for examples/$name: write one");
        }
        is(stop_cli($child), 0, 'SIGTERM: exit status 0');
        ok(!$child->{killed}, 'without needing SIGKILL');
        unlike($child->{stderr}, qr/\berror\b/i, 'no errors logged') or diag($child->{stderr});
    };
}

# --- examples/08-tls-introspection over TLS -----------------------------------

subtest 'examples/08-tls-introspection over TLS, with a client certificate' => sub {
    my $openssl = grep { -x "$_/openssl" } split /:/, $ENV{PATH} // '';
    my $have_ssl = eval { require IO::Socket::SSL; 1 };
    unless ($openssl && $have_ssl) {
        my $why = $openssl ? 'IO::Socket::SSL is not installed' : 'the openssl command is not installed';
        return fail("CI=true and $why: ./setup.sh installs it") if $CI;
        plan skip_all => $why;
    }
    # A throwaway CA, a server certificate for 127.0.0.1 and a client one.
    my $dir = File::Temp->newdir;
    my $openssl_run = sub {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>>', "$dir/openssl.log";
            open STDERR, '>&', \*STDOUT;
            exec 'openssl', @_ or POSIX::_exit(127);
        }
        waitpid $pid, 0;
        die "openssl @_ failed (see $dir/openssl.log)\n" if $?;
    };
    open my $cnf, '>', "$dir/openssl.cnf" or die $!;
    print {$cnf} "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
        . "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        . "[server]\nbasicConstraints = critical,CA:FALSE\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n"
        . "[client]\nbasicConstraints = critical,CA:FALSE\nextendedKeyUsage = clientAuth\n";
    close $cnf;
    my @ec = qw(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes);
    $openssl_run->('req', '-x509', @ec, '-keyout', "$dir/ca.key", '-out', "$dir/ca.pem", '-days', 2,
        '-subj', '/CN=Examples CA', '-config', "$dir/openssl.cnf", '-extensions', 'ca');
    for my $leaf ([ 'server', '/CN=localhost', 2 ], [ 'client', '/O=PAGI Examples/CN=example-client', 3 ]) {
        my ($name, $subject, $serial) = @$leaf;
        $openssl_run->('req', '-new', @ec, '-keyout', "$dir/$name.key", '-out', "$dir/$name.csr", '-subj', $subject,
            '-config', "$dir/openssl.cnf");
        $openssl_run->('x509', '-req', '-in', "$dir/$name.csr", '-CA', "$dir/ca.pem", '-CAkey', "$dir/ca.key",
            '-set_serial', $serial, '-days', 2, '-out', "$dir/$name.pem", '-extfile', "$dir/openssl.cnf", '-extensions', $name);
    }
    my $pem = sub { open my $fh, '<', "$dir/$_[0].pem" or die $!; local $/; scalar <$fh> };
    my ($server_pem, $client_pem, $ca_pem) = ($pem->('server'), $pem->('client'), $pem->('ca'));

    my $child = start_cli([ 'examples/08-tls-introspection/app.pl', '--ssl-cert', "$dir/server.pem",
        '--ssl-key', "$dir/server.key", '--ssl-ca', "$dir/ca.pem", '--ssl-verify-client', 'optional' ]);
    ok($child->{ready}, 'pagi-server starts it with TLS') or do { diag(stderr_of($child)); return };

    my $get = sub {
        my (%ssl) = @_;
        my $c = IO::Socket::SSL->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 5,
            SSL_ca_file => "$dir/ca.pem", SSL_verifycn_name => '127.0.0.1', SSL_verifycn_scheme => 'http', %ssl)
            or return (undef, undef, IO::Socket::SSL::errstr() || $@);
        print {$c} "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        my ($buf, $sel, $deadline) = ('', IO::Select->new($c), time + 10);
        while ((my $left = $deadline - time) > 0) {
            last unless $c->pending || $sel->can_read($left);
            my $n = sysread $c, $buf, 65536, length $buf;
            last unless $n;
        }
        my ($r) = parse_responses($buf);
        return ($r, $c->get_cipher, undef);
    };

    my ($r, $cipher, $err) = $get->(SSL_cert_file => "$dir/client.pem", SSL_key_file => "$dir/client.key");
    is($r && $r->{status}, 200, 'HTTPS GET / with a client certificate: status 200') or diag($err);
    my %IANA = (TLS_AES_128_GCM_SHA256 => '0x1301', TLS_AES_256_GCM_SHA384 => '0x1302',
                TLS_CHACHA20_POLY1305_SHA256 => '0x1303');
    my $id = $IANA{ $cipher // '' } // "(client negotiated $cipher)";
    is($r && $r->{body}, "scheme: https\n"
        . "tls_version: 0x0304 (TLS 1.3)\n"
        . "cipher_suite: $id (" . ($cipher // '') . ")\n"
        . "client_cert_name: O=PAGI Examples, CN=example-client\n"
        . "client_cert_error: (undef)\n"
        # IO::Socket::SSL sends the chain it can build: the leaf, then the CA.
        . "client_cert_chain: 2 certificate(s)\n"
        . "  [0] (leaf):\n$client_pem"
        . "  [1]:\n$ca_pem"
        . "server_cert:\n$server_pem",
        'the report shows every field of the tls extension');

    ($r, $cipher, $err) = $get->(SSL_version => 'TLSv1_2');
    is($r && $r->{status}, 200, 'HTTPS GET / over TLS 1.2 without a client certificate: status 200') or diag($err);
    my %IANA12 = ('ECDHE-ECDSA-AES128-GCM-SHA256' => '0xc02b (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)',
                  'ECDHE-ECDSA-AES256-GCM-SHA384' => '0xc02c (TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)',
                  'ECDHE-ECDSA-CHACHA20-POLY1305' => '0xcca9 (TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)');
    is($r && $r->{body}, "scheme: https\n"
        . "tls_version: 0x0303 (TLS 1.2)\n"
        . "cipher_suite: " . ($IANA12{ $cipher // '' } // "(client negotiated $cipher)") . "\n"
        . "client_cert_name: (undef)\n"
        . "client_cert_error: (undef)\n"
        . "client_cert_chain: 0 certificate(s)\n"
        . "server_cert:\n$server_pem",
        'the report of a TLS 1.2 connection without a client certificate');

    is(stop_cli($child), 0, 'SIGTERM: exit status 0');
    unlike($child->{stderr}, qr/\berror\b/i, 'no errors logged') or diag($child->{stderr});
};

done_testing;
