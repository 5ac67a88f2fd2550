package PAGI::Test::HTTP;
# Helpers for the wire-level HTTP tests: a persistent raw client connection
# driven by the shared IO::Async loop, a response-completeness check that
# understands framing, and a Net::Async::HTTP client on the same loop.
#
# Loads PAGI::Test::Server without importing it: the test file's own import
# of PAGI::Test::Server is what arms the per-file alarm.
use strict;
use warnings;

use parent 'Exporter';
use PAGI::Test::Server ();
use Carp ();
use Future;
use Future::AsyncAwait;
use IO::Select;
use IO::Socket::IP;
use Time::HiRes ();

our @EXPORT_OK = qw(open_conn complete_responses responses_done http_client split_head
                    start body sends header_values sse_events sse_stream dechunk);

sub _loop { PAGI::Test::Server::loop() }

# A chunked body → ($text, $complete, $rest): the chunks' data in order,
# whether the last chunk (size 0) ended it, and the bytes from the first one
# that is not a whole chunk (empty when every byte was whole chunks).
sub dechunk {
    my ($bytes) = @_;
    my ($out, $complete, $pos) = ('', 0, 0);
    while (1) {
        my $eol = index($bytes, "\r\n", $pos);
        last if $eol < 0;
        my $size = substr($bytes, $pos, $eol - $pos);
        last unless $size =~ /\A[0-9a-fA-F]+\z/;
        my $n = hex $size;
        if ($n == 0) {
            $complete = substr($bytes, $eol + 2) eq "\r\n";
            $pos = length $bytes if $complete;
            last;
        }
        last if $eol + 2 + $n + 2 > length $bytes;
        $out .= substr($bytes, $eol + 2, $n);
        last unless substr($bytes, $eol + 2 + $n, 2) eq "\r\n";
        $pos = $eol + 2 + $n + 2;
    }
    return ($out, $complete, substr($bytes, $pos));
}

# Server-Sent Events in $stream → list of {field => value} (data lines joined).
sub sse_events {
    my ($stream) = @_;
    my @events;
    for my $block (split /\n\n/, $stream) {
        my %e;
        for my $line (split /\n/, $block) {
            next if $line =~ /\A:/;
            my ($field, $value) = $line =~ /\A([^:]+): ?(.*)\z/ or next;
            $e{$field} = exists $e{$field} && $field eq 'data' ? "$e{$field}\n$value" : $value;
        }
        push @events, \%e if %e;
    }
    return @events;
}

# An SSE stream read from a raw socket: ->(\&cond, $timeout) reads until
# cond(@events) holds; ->() returns the events so far.
sub sse_stream {
    my ($port, $path, @headers) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5) or return;
    syswrite $sock, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        . join('', map { "$_\r\n" } @headers) . "\r\n";
    my ($buf, $sel) = ('', IO::Select->new($sock));
    my $events = sub {
        my ($b) = $buf =~ /\r\n\r\n(.*)\z/s;
        # Chunked framing: drop the chunk-size lines between the event bytes.
        $b = join '', ($b // '') =~ /\G[0-9a-fA-F]+\r\n(.*?)\r\n/gs;
        sse_events($b);
    };
    return sub {
        my ($cond, $timeout) = @_;
        return ($events->()) unless $cond;
        my $deadline = Time::HiRes::time() + $timeout;
        until ($cond->($events->())) {
            my $left = $deadline - Time::HiRes::time();
            return 0 if $left <= 0 || !$sel->can_read($left);
            sysread($sock, $buf, 65536, length $buf) or return 0;
        }
        return 1;
    }, $sock, \$buf;
}

# Event builders and a fixed-script app, shared by the response tests.
sub start { my ($status, @h) = @_; return { type => 'http.response.start', status => $status, headers => [@h] } }
sub body  { my ($bytes, $more) = @_; return { type => 'http.response.body', body => $bytes, more => $more ? 1 : 0 } }

# An app that sends the given events, in order, and returns.
sub sends {
    my (@events) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        for my $ev (@events) { await $send->($ev) }
    };
}

# Values of a parsed response's header, by lower-case name.
sub header_values {
    my ($r, $name) = @_;
    return map { $_->[1] } grep { $_->[0] eq $name } @{ $r->{headers} };
}

# open_conn($port, host => '127.0.0.1') → a PAGI::Test::HTTP::Conn
sub open_conn { PAGI::Test::HTTP::Conn->new(@_) }

# split_head($bytes) → ($head_without_blank_line, $rest), or () when there is no full head.
sub split_head {
    my ($bytes) = @_;
    my $at = index($bytes, "\r\n\r\n");
    return if $at < 0;
    return (substr($bytes, 0, $at + 2), substr($bytes, $at + 4));
}

# complete_responses($bytes, eof => 0/1, head => [indexes of HEAD responses])
# → how many final (non-1xx) responses in $bytes are complete by their framing.
# A close-delimited body only counts once eof is true.
sub complete_responses {
    my ($bytes, %o) = @_;
    my %head = map { $_ => 1 } @{ $o{head} || [] };
    my $count = 0;
    while (length $bytes) {
        my ($head, $rest) = split_head($bytes) or last;
        my ($status) = $head =~ m{\AHTTP/\d\.\d (\d{3})} or last;
        $bytes = $rest;
        next if $status < 200;
        my %h;
        for my $line (split /\r\n/, $head) {
            $h{ lc $1 } = $2 if $line =~ /^([^:\s]+):\s*(.*?)\s*$/;
        }
        if ($head{$count} || $status == 204 || $status == 304) {
            $count++;
            next;
        }
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            my $done = 0;
            while ($bytes =~ /\A([0-9a-fA-F]+)[^\r\n]*\r\n/) {
                my ($line, $n) = ($&, hex $1);
                if ($n == 0) {
                    my $end = index($bytes, "\r\n\r\n", length($line) - 2);
                    last if $end < 0;
                    $bytes = substr($bytes, $end + 4);
                    $done = 1;
                    last;
                }
                last if length($bytes) < length($line) + $n + 2;
                $bytes = substr($bytes, length($line) + $n + 2);
            }
            return $count unless $done;
        }
        elsif (defined $h{'content-length'}) {
            return $count if length($bytes) < $h{'content-length'};
            $bytes = substr($bytes, $h{'content-length'});
        }
        else {
            return $o{eof} ? $count + 1 : $count;
        }
        $count++;
    }
    return $count;
}

# responses_done($n, %opts) → condition for Conn::read_until: $n final responses complete.
sub responses_done {
    my ($n, %o) = @_;
    return sub { complete_responses($_[0], %o, eof => $_[1]) >= $n };
}

# http_client() → a Net::Async::HTTP on the shared loop (one per file is enough).
my $CLIENT;
sub http_client {
    return $CLIENT if $CLIENT;
    require Net::Async::HTTP;
    $CLIENT = Net::Async::HTTP->new(max_connections_per_host => 1, timeout => 10);
    _loop()->add($CLIENT);
    return $CLIENT;
}

package PAGI::Test::HTTP::Conn;
# One client connection that stays open across reads, so a test can write,
# read a response, look at the socket, write again, half-close, and so on.
use strict;
use warnings;
use IO::Async::Stream;
use IO::Socket::IP;
use Socket ();
use Scalar::Util qw(weaken);

sub new {
    my ($class, $port, %o) = @_;
    my $sock = IO::Socket::IP->new(
        PeerHost => $o{host} // '127.0.0.1',
        PeerPort => $port,
        Type     => Socket::SOCK_STREAM(),
    ) or Carp::croak("connect to port $port: $@");
    my $self = bless { loop => PAGI::Test::HTTP::_loop(), sock => $sock, buf => '', eof => 0, waiters => [] }, $class;
    # Read now: once closed, the socket no longer knows its address.
    $self->{sockport} = $sock->sockport;
    $self->{sockhost} = $sock->sockhost;
    weaken(my $weak = $self);
    $self->{stream} = IO::Async::Stream->new(
        handle  => $sock,
        on_read => sub {
            my (undef, $in, $eof) = @_;
            if ($weak) {
                $weak->{buf} .= $$in;
                $weak->{eof} = 1 if $eof;
                $weak->_check;
            }
            $$in = '';
            return 0;
        },
        on_read_eof    => sub { return unless $weak; $weak->{eof} = 1; $weak->_check },
        on_read_error  => sub { return unless $weak; $weak->{eof} = 1; $weak->{read_error} = $_[1]; $weak->_check },
        on_write_error => sub { $weak->{write_error} = $_[1] if $weak },
    );
    $self->{loop}->add($self->{stream});
    return $self;
}

sub sockport { $_[0]{sockport} }
sub sockhost { $_[0]{sockhost} }
sub buffer   { $_[0]{buf} }
sub is_eof   { $_[0]{eof} }

# Returns what was received so far and empties the buffer.
sub take {
    my ($self) = @_;
    my $b = $self->{buf};
    $self->{buf} = '';
    return $b;
}

sub write {
    my ($self, $bytes) = @_;
    $self->{stream}->write($bytes);
    return $self;
}

# Half-close: the server sees EOF, this side can still read.
sub shutdown_write {
    my ($self) = @_;
    my $sock = $self->{sock};
    $self->{stream}->write('', on_flush => sub { shutdown($sock, 1) });
    return $self;
}

sub close {
    my ($self) = @_;
    $self->{stream}->close_now if $self->{stream}->loop;
    $self->{eof} = 1;
}

# read_until($cond, $timeout) → Future of the whole buffer once $cond holds.
# $cond is a qr// matched against the buffer, or a code ref called with
# ($buffer, $eof). Fails on timeout (default 5 s) or when EOF arrives first.
sub read_until {
    my ($self, $cond, $timeout) = @_;
    my $f = $self->{loop}->new_future;
    push @{ $self->{waiters} }, [ $cond, $f ];
    $self->_check;
    $timeout //= 5;
    my $buf_ref = \$self->{buf};
    return Future->wait_any(
        $f,
        $self->{loop}->delay_future(after => $timeout)->then(sub {
            Future->fail("read_until timed out after ${timeout}s; got: " . _show(substr($$buf_ref, 0, 400)));
        }),
    );
}

# wait_eof($timeout) → Future of the buffer once the server closed the connection.
sub wait_eof {
    my ($self, $timeout) = @_;
    return $self->read_until(sub { $_[1] }, $timeout);
}

# stays_open($seconds) → true when no EOF arrived within $seconds.
sub stays_open {
    my ($self, $seconds) = @_;
    $self->{loop}->delay_future(after => $seconds)->get;
    return !$self->{eof};
}

sub _check {
    my ($self) = @_;
    my @keep;
    for my $w (@{ $self->{waiters} }) {
        my ($cond, $f) = @$w;
        next if $f->is_ready;
        my $hit = ref $cond eq 'CODE' ? $cond->($self->{buf}, $self->{eof}) : $self->{buf} =~ $cond;
        if ($hit) { $f->done($self->{buf}) }
        elsif ($self->{eof}) { $f->fail('connection closed before the condition held; got: ' . _show(substr($self->{buf}, 0, 400))) }
        else { push @keep, $w }
    }
    $self->{waiters} = \@keep;
}

sub _show {
    my ($s) = @_;
    $s =~ s/([^\x20-\x7e])/sprintf '\\x%02X', ord $1/ge;
    return $s;
}

sub DESTROY {
    my ($self) = @_;
    local $@;
    eval { $self->{stream}->close_now if $self->{stream} && $self->{stream}->loop };
}

1;
