package PAGI::Test::Client::HTTP;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Future;
use Scalar::Util ();
use PAGI::Server::Validate;
use PAGI::Test::Client::Check;
use PAGI::Test::Client::Response;

use parent -norequire, 'PAGI::Test::Client::Exchange';
use PAGI::Test::Client::Exchange ();

our @CARP_NOT = qw(PAGI::Test::Client);

=head1 NAME

PAGI::Test::Client::HTTP - internal: one in-process HTTP exchange of PAGI::Test::Client

=head1 DESCRIPTION

Internal to L<PAGI::Test::Client>. Feeds the request body to the app as
C<http.request> events, then C<http.disconnect> once the response is
complete; checks every event the app sends (type, field types, order,
header bytes) and collects the response. The object is also the scope's
C<pagi.connection> (PAGI-SPEC 3.1.5): nothing ever disconnects in
process, so C<on_disconnect> callbacks never run and C<on_complete> ones
run when the final body (or the trailers) arrive.

=cut

my %SEND = (
    'http.response.start'    => '_start',
    'http.response.body'     => '_body',
    'http.response.trailers' => '_trailers',
    'http.fullflush'         => '_fullflush',
);

sub new {
    my ($class, %args) = @_;
    my $self = bless { %args, state => 0, chunks => [], on_complete => [] }, $class;
    my $body = $self->{body};
    my $size = $self->{chunk_size};
    my @pieces = $size && length $body > $size ? unpack("(a$size)*", $body) : ($body);
    $self->{inbox} = [ map { { type => 'http.request', body => $pieces[$_], more => $_ < $#pieces ? 1 : 0 } } 0 .. $#pieces ];
    $self->{scope}{'pagi.connection'} = $self;
    return $self;
}

# Runs the app to the end; returns the response or croaks.
sub run {
    my ($self) = @_;
    my $client = $self->{client};
    my $scope = $self->{scope};
    # The scope holds this object (pagi.connection), so these links are weak
    # and a finished exchange leaves no cycle behind.
    Scalar::Util::weaken($self->{scope});
    Scalar::Util::weaken($self->{client});
    my $app_f = $client->_call_app($scope, sub { $self->_receive }, sub { $self->_send(@_) });
    my $what = $self->{what};
    my $in_time = $client->_wait(sub { $app_f->is_ready }, $self->{timeout});
    croak "PAGI::Test::Client: $what: " . $self->{problem} if defined $self->{problem};
    croak "PAGI::Test::Client: $what: " . $self->_timeout_message unless $in_time;
    my $error = $app_f->is_failed ? ($app_f->failure)[0] : undef;
    $error =~ s/\s+\z// if defined $error;
    if ($client->{raise_app_errors}) {
        croak "PAGI::Test::Client: $what: the app died: $error" if defined $error;
        croak "PAGI::Test::Client: $what: the app returned without sending http.response.start" unless $self->{state};
        croak "PAGI::Test::Client: $what: the app returned before the final http.response.body (the last one had more => 1)"
            if $self->{state} == 1;
        croak "PAGI::Test::Client: $what: the app returned without the http.response.trailers it announced"
            if $self->{state} == 3;
    }
    return $self->_server_error unless $self->{state};
    return PAGI::Test::Client::Response->new(
        status   => $self->{status},
        headers  => $self->{headers},
        body     => $scope->{method} eq 'HEAD' ? '' : join('', @{ $self->{chunks} }),
        chunks   => $self->{chunks},
        trailers => $self->{trailers} // [],
        error    => $error,
    );
}

# What PAGI::Server answers when the app died or returned before starting.
sub _server_error {
    my $body = "Internal Server Error\n";
    return PAGI::Test::Client::Response->new(
        status => 500, headers => [ [ 'content-type', 'text/plain' ] ], body => $body, chunks => [$body]);
}

sub _timeout_message {
    my ($self) = @_;
    my $t = $self->{timeout};
    return "timed out after ${t}s: the app sent no http.response.start" unless $self->{state};
    return "timed out after ${t}s: the response was started (status $self->{status}) but the final body "
         . '(more => 0) never came; ' . scalar(@{ $self->{chunks} }) . ' body event(s) so far' if $self->{state} == 1;
    return "timed out after ${t}s: the app never sent the http.response.trailers it announced" if $self->{state} == 3;
    return "timed out after ${t}s: the response was complete but the app did not return";
}

sub _receive {
    my ($self) = @_;
    return $self->_next_inbound($self->{state} == 2 ? { type => 'http.disconnect' } : undef);
}

sub _send {
    my ($self, $event) = @_;
    my $problem = $self->_event_problem($event, \%SEND, 'http') // PAGI::Server::Validate->http_event($event);
    unless (defined $problem) {
        my $method = $SEND{ $event->{type} };
        $problem = $self->$method($event);
    }
    return $self->_answer($problem);
}

sub _start {
    my ($self, $event) = @_;
    return 'http.response.start: sent twice (the response was already started)' if $self->{state};
    if (my $p = PAGI::Test::Client::Check::status($event->{status})) { return "http.response.start: 'status' $p" }
    my $headers = $event->{headers} // [];
    if (my $p = PAGI::Test::Client::Check::headers($headers)) { return "http.response.start: 'headers' $p" }
    $self->{status}   = $event->{status} + 0;
    $self->{headers}  = [ map { [@$_] } @$headers ];
    $self->{trailers_announced} = $event->{trailers} ? 1 : 0;
    $self->{state} = 1;
    return undef;
}

sub _body {
    my ($self, $event) = @_;
    return 'http.response.body: sent before http.response.start' unless $self->{state};
    return 'http.response.body: sent after the final body (more => 0)' if $self->{state} > 1;
    my @given = grep { defined $event->{$_} } qw(body file fh);
    return "http.response.body: only one of 'body', 'file' and 'fh' may be given (got @given)" if @given > 1;
    my ($bytes, $problem) = @given && $given[0] ne 'body' ? $self->_read_file($event) : ($event->{body} // '');
    return $problem if defined $problem;
    push @{ $self->{chunks} }, $bytes;
    # file and fh always complete the body (PAGI-SPEC 3.1.2).
    return undef if $event->{more} && !(@given && $given[0] ne 'body');
    $self->{trailers_announced} ? ($self->{state} = 3) : $self->_complete;
    return undef;
}

# The bytes a file or fh body puts on the wire, honouring offset and length.
sub _read_file {
    my ($self, $event) = @_;
    my $fh = $event->{fh};
    if (defined $event->{file}) {
        open $fh, '<:raw', $event->{file}
            or return (undef, "http.response.body: cannot open file '$event->{file}': $!");
    }
    my $offset = $event->{offset} // 0;
    seek $fh, $offset, 0 or return (undef, "http.response.body: cannot seek to offset $offset: $!") if $offset;
    my ($bytes, $want) = ('', $event->{length});
    while (!defined $want || length $bytes < $want) {
        my $n = read $fh, my $buf, defined $want ? $want - length $bytes : 65536;
        return (undef, "http.response.body: reading the file failed: $!") unless defined $n;
        last unless $n;
        $bytes .= $buf;
    }
    close $fh if defined $event->{file};
    return ($bytes);
}

sub _trailers {
    my ($self, $event) = @_;
    return 'http.response.trailers: sent before http.response.start' unless $self->{state};
    return 'http.response.trailers: http.response.start did not announce them (trailers => 1)'
        unless $self->{trailers_announced};
    return 'http.response.trailers: sent before the final body (more => 0)' if $self->{state} == 1;
    return 'http.response.trailers: sent twice' if $self->{state} == 2;
    my $headers = $event->{headers} // [];
    if (my $p = PAGI::Test::Client::Check::headers($headers)) { return "http.response.trailers: 'headers' $p" }
    $self->{trailers} = [ map { [@$_] } @$headers ];
    $self->_complete;
    return undef;
}

sub _fullflush {
    my ($self) = @_;
    return undef if $self->{scope}{extensions}{fullflush};
    return 'http.fullflush: the fullflush extension is not advertised in this scope';
}

sub _complete {
    my ($self) = @_;
    $self->{state} = 2;
    if (my $f = delete $self->{receive_f}) { $f->done({ type => 'http.disconnect' }) }
    $_->() for splice @{ $self->{on_complete} };
}

=head1 METHODS (pagi.connection)

C<is_connected>, C<disconnect_reason> (always C<undef>), C<on_disconnect>
(kept, never called), C<response_started>, C<response_complete>,
C<on_complete>, C<disconnect_future> (never resolves).

=cut

sub is_connected { $_[0]{state} == 2 ? 0 : 1 }

sub disconnect_reason { undef }

sub on_disconnect { push @{ $_[0]{on_disconnect} }, $_[1]; return }

sub response_started { $_[0]{state} ? 1 : 0 }

sub response_complete { $_[0]{state} == 2 ? 1 : 0 }

sub on_complete {
    my ($self, $cb) = @_;
    $self->{state} == 2 ? $cb->() : push @{ $self->{on_complete} }, $cb;
    return;
}

sub disconnect_future { $_[0]{disconnect_f} //= Future->new }

1;
