package PAGI::Server::Future;
use strict;
use warnings;

our $VERSION = '0.01';

use IO::Async::Future;
use Carp ();
use Scalar::Util qw(refaddr weaken);

our @ISA = ('IO::Async::Future');

=head1 NAME

PAGI::Server::Future - the pending Futures PAGI::Server hands to apps

=head1 SYNOPSIS

    my $class = PAGI::Server::Future->class_for($loop);
    my $f = $class->new;          # a pending IO::Async::Future of $loop
    $f->loop;                     # $loop
    $f->get;                      # runs $loop until $f is ready

=head1 DESCRIPTION

Internal to L<PAGI::Server>. A C<$receive> that has nothing yet, and a
C<$send> that waits for the client to read, return one of these. They are
L<IO::Async::Future>s (so C<< ->get >> in an app runs the loop rather than
dying, and C<loop>, C<done_later> and C<fail_later> work), made as cheaply
as a plain L<Future>: an IO::Async::Future stores its loop in each new
object, which costs a WebSocket echo about a tenth of the Perl thread's
instructions per message. Here the loop belongs to the class instead: each
loop gets a subclass of its own, whose objects are made by Future's own
constructor (L<Future::PP>'s or L<Future::XS>'s).

=head1 METHODS

=over

=item class_for($loop)

The class whose Futures belong to C<$loop> (made on first use, kept for
the life of the process; the loop itself is held weakly).

=item new

A pending Future; called on an object, one of the same class (as Future's
combinators do).

=item loop

The loop of the Future's class.

=back

=cut

my $FUTURE_NEW = Future->can('new');
my %class_of;    # refaddr of a loop => its class
my $classes = 0;

sub class_for {
    my (undef, $loop, $server) = @_;
    my $class = $class_of{ refaddr $loop } //= do {
        my $name = __PACKAGE__ . '::Loop' . ++$classes;
        no strict 'refs';
        @{"${name}::ISA"} = (__PACKAGE__);
        $name;
    };
    no strict 'refs';
    # A loop at the address of one that is gone takes over its class.
    my $slot = \${"${class}::LOOP"};
    if (!$$slot || $$slot != $loop) {
        $$slot = $loop;
        weaken($$slot);
        @{"${class}::SERVERS"} = ();
    }
    if ($server) {
        my $servers = \@{"${class}::SERVERS"};
        @$servers = grep { defined($_) && $_ != $server } @$servers;
        push @$servers, $server;
        weaken($servers->[-1]);
    }
    return $class;
}

sub forget_server {
    my (undef, $server) = @_;
    no strict 'refs';
    for my $class (values %class_of) {
        my $servers = \@{"${class}::SERVERS"};
        @$servers = grep { defined($_) && $_ != $server } @$servers;
    }
}

{ no warnings 'once'; *new = $FUTURE_NEW; }    # no frame of ours around it

sub loop {
    no strict 'refs';
    return ${ (ref($_[0]) || $_[0]) . '::LOOP' };
}

# A blocking ->get from inside an app runs here, usually within the drain
# that called the app: each pass first lets the loop's servers send what
# is queued (the want_body or accept the Future waits on) and dispatch the
# rest of their drained events, then runs the loop once.
sub await {
    my ($self) = @_;
    return $self if $self->is_ready;
    my $loop = $self->loop or Carp::croak("$self: its loop is gone, so ->get cannot wait for it");
    no strict 'refs';
    my $servers = \@{ ref($self) . '::SERVERS' };
    until ($self->is_ready) {
        $_ && $_->_on_wake for @$servers;
        $loop->loop_once unless $self->is_ready;
    }
    return $self;
}

1;
